"""The best mIoU any SAM-style model of a given input size can reach on a COCO-layout dataset.

SAM's decoder predicts mask logits at 1/4 of the input frame (64 x 64 for input 256, 256 x 256 for
1024) that are upsampled bilinearly to the image. Even a perfect model is limited by that grid: this
script takes every ground-truth mask, resizes it to the model's input frame (longest side =
``--input-size``), averages it onto the 1/4 grid (the ideal low-res prediction), upsamples it back to
the image bilinearly, thresholds at 0.5 and reports the IoU with the original mask.

    python benchmarks/mask_resolution_ceiling.py DATA/annotations.json --input-size 256 1024
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils


def ceiling_iou(mask: np.ndarray, input_size: int) -> float:
    """IoU of ``mask (H, W)`` with its best reconstruction from a 1/4-input-frame logit grid."""
    h, w = mask.shape
    scale = input_size / max(h, w)
    grid = (max(1, round(h * scale / 4)), max(1, round(w * scale / 4)))
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    low = F.interpolate(t, size=grid, mode="area")
    back = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
    return float((back & mask).sum() / max((back | mask).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", help="COCO instances JSON (e.g. the recipe's data/val/annotations.json)")
    parser.add_argument("--input-size", type=int, nargs="+", default=[256, 512, 1024])
    args = parser.parse_args()
    coco = json.load(open(args.annotations))
    images = {im["id"]: im for im in coco["images"]}
    masks: list[np.ndarray] = []
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, im["height"], im["width"]))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, im["height"], im["width"])
        else:
            rle = seg
        masks.append(mask_utils.decode(rle).astype(bool))
    areas = np.array([m.sum() for m in masks])
    print(f"{len(masks)} masks in {len(images)} images; median area {np.median(areas):.0f} px")
    for size in args.input_size:
        ious = np.array([ceiling_iou(m, size) for m in masks])
        by_area = defaultdict(list)
        for a, iou in zip(areas, ious):
            by_area["small (<32^2)" if a < 32**2 else "medium" if a < 96**2 else "large (>=96^2)"].append(iou)
        parts = ", ".join(f"{k} {np.mean(v):.3f} (n={len(v)})" for k, v in sorted(by_area.items()))
        print(f"input {size}: ceiling mIoU {ious.mean():.3f}; {parts}")


if __name__ == "__main__":
    main()
