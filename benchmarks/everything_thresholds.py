"""Choose a model's segment-everything thresholds: precision / recall / F1 on held-out synthetic scenes.

SAM's defaults (predicted IoU >= 0.88, stability >= 0.95) suit SAM's calibrated IoU head; a small model
trained here predicts lower IoUs and needs its own. For each threshold pair this prints how many masks
were kept and how they match the ground truth one-to-one (Hungarian matching, a match = IoU >= 0.5).

    python benchmarks/everything_thresholds.py --model unisam-tiny --images 8
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from scipy.optimize import linear_sum_assignment

import unisam
from unisam.data.synthetic import KINDS, generate_sample


def match(pred: np.ndarray, gt: np.ndarray, iou_min: float = 0.5) -> int:
    """Number of one-to-one matches with IoU >= ``iou_min`` between (P, H, W) and (G, H, W) masks."""
    if not len(pred) or not len(gt):
        return 0
    p = pred.reshape(len(pred), -1).astype(np.float32)
    g = gt.reshape(len(gt), -1).astype(np.float32)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None] - inter
    iou = inter / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-iou)
    return int((iou[rows, cols] >= iou_min).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--iou", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.88])
    parser.add_argument("--stability", type=float, nargs="+", default=[0.7, 0.8, 0.9, 0.95])
    args = parser.parse_args()
    model = unisam.get_model(args.model)
    rng = np.random.default_rng(args.seed)
    samples = [generate_sample(rng, (256, 256), KINDS[i % len(KINDS)]) for i in range(args.images)]
    total_gt = sum(len(s.masks) for s in samples)
    print(f"model {model.name}; {args.images} images, {total_gt} objects; points_per_side {args.points_per_side}")
    print("pred_iou_thresh stability kept matched precision recall F1")
    for iou_t, stab_t in itertools.product(args.iou, args.stability):
        kept = matched = 0
        for s in samples:
            found = unisam.segment_everything(s.image, model=model, points_per_side=args.points_per_side,
                                              pred_iou_thresh=iou_t, stability_score_thresh=stab_t)
            kept += len(found)
            matched += match(found.masks, s.masks)
        precision, recall = matched / max(kept, 1), matched / max(total_gt, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        print(f"{iou_t:15.2f} {stab_t:9.2f} {kept:4d} {matched:7d} {precision:9.3f} {recall:6.3f} {f1:.3f}")


if __name__ == "__main__":
    main()
