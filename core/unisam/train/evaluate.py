"""mIoU of a promptable model on a dataset, with EdgeSAM's protocol, for torch models and ONNX exports.

For every image, up to ``max_instances`` instances (a seeded random subset) are prompted with their
ground-truth box (COCO extent) or their centre point (the pixel farthest from the mask boundary),
then refined ``refine`` times: each round adds one click at the centre of the largest error region
of the previous prediction (positive in a missed part, negative in a spurious one; deterministic) to
the prompt, which is decoded again from scratch (no mask input), as EdgeSAM evaluates. The
prediction is the single-mask output, upscaled to the original image exactly as the runtime does
(bilinear x4, crop the padding, bilinear to the original size) and thresholded at 0. IoU is taken
at the original resolution; mIoU is the mean over all prompted instances.

The same function runs a torch :class:`~unisam.models.Sam` or a runtime
:class:`~unisam.runtime.predictor.Predictor` (e.g. ``unisam.load_model(weights=export_dir)``), so an
exported model is scored exactly as users run it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..prompts import PAD, make_prompt
from ..runtime.predictor import Predictor
from ..runtime.transforms import normalize_and_pad, resize_longest_side
from .data import Source
from .prompting import Prompts, boxes_from_masks, center_points, error_points

PROMPT_TYPES = ("box", "center")


def _iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``(M, H, W)`` bool pairs -> ``(M,)`` IoU (1 when both are empty)."""
    inter = (pred & gt).sum((1, 2))
    union = (pred | gt).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


class _TorchRunner:
    """Embeds and decodes with a torch model, preprocessing like the runtime."""

    def __init__(self, model):
        self.model = model

    def embed(self, image: np.ndarray):
        spec = self.model.spec
        resized = resize_longest_side(image, spec.image_size)
        x = torch.from_numpy(normalize_and_pad(resized, spec.image_size, spec.pixel_mean, spec.pixel_std))
        return self.model.embed_image(x), resized.shape[:2], image.shape[:2]

    def predict(self, state, prompts: Prompts) -> np.ndarray:
        emb, (h, w), (oh, ow) = state
        coords, labels = prompts.scaled(w / ow, h / oh).tokens()
        low, _ = self.model.forward_decoder(emb, coords, labels, None, num_outputs=1)
        s = self.model.image_size
        up = F.interpolate(low, (s, s), mode="bilinear", align_corners=False)[..., :h, :w]
        return (F.interpolate(up, (oh, ow), mode="bilinear", align_corners=False)[:, 0] > 0).numpy()


class _OnnxRunner:
    """Embeds and decodes through the runtime :class:`Predictor` (original-image coordinates)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def embed(self, image: np.ndarray):
        return self.predictor.embed(image)

    def predict(self, state, prompts: Prompts) -> np.ndarray:
        items = []
        for i in range(prompts.points.shape[0]):
            keep = prompts.labels[i] != PAD
            points = prompts.points[i][keep].numpy() if keep.any() else None
            labels = prompts.labels[i][keep].numpy() if keep.any() else None
            box = None if prompts.boxes is None else prompts.boxes[i].numpy()
            items.append(make_prompt(points, labels, box, image_size=state.original_size))
        predictions = self.predictor.predict_prompts(state, items, multimask=False)
        return np.stack([p.masks[0] for p in predictions])


def _instances(masks: np.ndarray, max_instances: int, seed: int, index: int) -> np.ndarray:
    """Indices of the non-empty masks to prompt: a seeded random subset, in increasing order."""
    nonempty = np.flatnonzero(masks.reshape(len(masks), -1).any(1))
    rng = np.random.default_rng([seed, index])
    return np.sort(rng.permutation(nonempty)[:max_instances])


def _refine(runner, state, prompt: Prompts, pred: np.ndarray, gt: torch.Tensor) -> tuple[Prompts, np.ndarray]:
    """One refinement round: each prompt gets a click at the centre of the largest error region of its
    prediction ``pred (M, H, W)`` bool against ``gt (M, H, W)`` and is decoded again; a perfect mask
    gets a padding click and keeps its prediction. Returns the new prompts and predictions."""
    xy, labels = error_points(torch.from_numpy(pred), gt, "center")
    todo = labels != PAD
    prompt = prompt.add(xy, labels)
    if todo.any():
        pred = pred.copy()
        pred[todo.numpy()] = runner.predict(state, prompt.subset(todo))
    return prompt, pred


def _image_ious(runner, state, gt: np.ndarray, prompts: Sequence[str], refine: int) -> dict[str, np.ndarray]:
    """IoU ``(M,)`` of one image's instances ``gt (M, H, W)`` bool for each prompt type and refinement
    round, keyed ``"box"``, ``"box+1"``, ..., ``"center"``, ... in that order."""
    gt_t = torch.from_numpy(np.ascontiguousarray(gt))
    ious = {}
    for kind in prompts:
        if kind == "box":
            prompt = Prompts.from_boxes(boxes_from_masks(gt_t))
        else:
            prompt = Prompts.from_points(center_points(gt_t))
        pred = runner.predict(state, prompt)
        ious[kind] = _iou(pred, gt)
        for r in range(1, refine + 1):
            prompt, pred = _refine(runner, state, prompt, pred, gt_t)
            ious[f"{kind}+{r}"] = _iou(pred, gt)
    return ious


def evaluate(
    model,
    source: Source,
    prompts: Sequence[str] = PROMPT_TYPES,
    refine: int = 2,
    max_images: int | None = None,
    max_instances: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """mIoU of ``model`` (a torch ``Sam`` or a runtime ``Predictor``) on ``source``.

    Returns ``{"box": ..., "box+1": ..., "box+2": ..., "center": ..., ...}`` (the keys for the
    requested ``prompts`` and refinement rounds) plus ``"images"`` and ``"instances"`` counts.
    """
    from tqdm.auto import tqdm

    bad = [p for p in prompts if p not in PROMPT_TYPES]
    if bad or not prompts:
        raise ValueError(f"prompts must be a non-empty subset of {PROMPT_TYPES}, got {list(prompts)}")
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    is_torch = isinstance(model, torch.nn.Module)
    runner = _TorchRunner(model) if is_torch else _OnnxRunner(model)
    was_training = is_torch and model.training
    if is_torch:
        model.eval()
    n = len(source) if max_images is None else min(max_images, len(source))
    ious: dict[str, list[np.ndarray]] = {}
    count = 0
    with torch.no_grad():
        for index in tqdm(range(n), desc="evaluate", disable=not progress, leave=False):
            item = source[index]
            chosen = _instances(item.masks, max_instances, seed, index)
            if not len(chosen):
                continue
            count += len(chosen)
            state = runner.embed(item.image)
            for key, values in _image_ious(runner, state, item.masks[chosen], prompts, refine).items():
                ious.setdefault(key, []).append(values)
    if was_training:
        model.train()
    result = {k: float(np.concatenate(v).mean()) for k, v in ious.items()}
    return result | {"images": n, "instances": count}


def format_table(results: dict[str, dict[str, float]], title: str = "model") -> str:
    """Markdown table: one row per model (``results[name]`` as returned by :func:`evaluate`), one
    column per prompt setting, mIoU in percent."""
    columns = [k for k in next(iter(results.values())) if k not in ("images", "instances")]
    lines = [f"| {title} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)


def measure_latency(predictor: Predictor, source: Source, images: int = 5, prompts: int = 16) -> dict[str, float]:
    """Median runtime latency in milliseconds: ``encoder`` per image (the first ``images + 1`` images
    of ``source``, which ``predictor`` must not have embedded yet; the first run is a warm-up) and
    ``decoder`` per single-box prompt (up to ``prompts`` per image)."""
    if len(source) < images + 1:
        raise ValueError(f"need {images + 1} images to time the encoder, the source has {len(source)}")
    enc, dec = [], []
    for index in range(images + 1):
        item = source[index]
        runs = predictor.encoder_runs
        t = time.perf_counter()
        emb = predictor.embed(item.image)
        enc.append(time.perf_counter() - t)
        if predictor.encoder_runs == runs:
            raise ValueError("the predictor had this image cached: time the encoder with a fresh predictor")
        boxes = boxes_from_masks(torch.from_numpy(item.masks[:prompts])).numpy()
        for box in boxes:
            t = time.perf_counter()
            predictor.predict(emb, box=box, multimask=False)
            dec.append(time.perf_counter() - t)
    return {"encoder_ms": 1000 * float(np.median(enc[1:])), "decoder_ms": 1000 * float(np.median(dec[1:]))}
