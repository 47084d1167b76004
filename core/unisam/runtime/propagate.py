"""Propagate one object's mask through a z-stack or a sequence of frames, slice by slice.

From a mask on a start slice, each neighbouring slice is prompted with what the previous slice gave:
the box of its mask plus positive points deep inside it (deterministic), and, when the decoder takes
one, the previous prediction's low-resolution logits as mask input. Propagation runs in both
directions and stops on each side when the object is lost: the predicted IoU drops below
``score_threshold``, the mask overlaps the previous one by less than ``min_overlap`` (IoU), or it is
smaller than ``min_area`` pixels. Each slice is embedded once through the predictor's caches, and only
the slices that are reached are embedded at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..prompts import Prompt
from .predictor import Predictor

DEFAULT_SCORE_THRESHOLD = 0.75
DEFAULT_MIN_OVERLAP = 0.3


@dataclass(frozen=True)
class PropagationStep:
    """The object on one slice: mask (H, W) bool, score = predicted IoU, overlap = mask IoU with the
    previous slice's mask."""

    index: int
    mask: np.ndarray
    score: float
    overlap: float


@dataclass
class Propagation:
    """One object through a stack of Z slices.

    masks: (Z, H, W) bool, empty on slices the object was not propagated to. scores: (Z,) float32
    predicted IoU per slice, NaN on the start slice (given, not predicted) and on slices not reached.
    first, last: the inclusive range of slices that hold the object.
    """

    masks: np.ndarray
    scores: np.ndarray
    start: int
    first: int
    last: int


def mask_to_prompt(mask: np.ndarray, n_points: int = 1, low_res_logits: np.ndarray | None = None) -> Prompt:
    """A prompt that asks for the object of ``mask`` (H, W) bool: its box (x1, y1, x2, y2, pixel edges,
    so a one-pixel mask at column c spans c..c+1), ``n_points`` positive points at pixel centres deep
    inside it (the innermost pixel first, then each next one farthest from those chosen; deterministic)
    and optional previous ``low_res_logits`` (s, s) as mask input."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(
            f"need a non-empty (H, W) mask to build a prompt; got shape {mask.shape}, {int(mask.sum())} pixels"
        )
    if n_points < 0:
        raise ValueError(f"n_points must be >= 0, got {n_points}")
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][rows, cols]
    # candidates: the inner half of the object (at least the deepest pixel), in raster order
    inner = np.flatnonzero(depth >= depth.max() / 2)
    chosen = [int(inner[np.argmax(depth[inner])])]
    dist = np.full(inner.size, np.inf)
    while len(chosen) < min(n_points, inner.size):
        last = chosen[-1]
        dist = np.minimum(dist, np.hypot(rows[inner] - rows[last], cols[inner] - cols[last]))
        chosen.append(int(inner[np.argmax(dist)]))
    chosen = chosen[:n_points]
    points = np.stack([cols[chosen] + 0.5, rows[chosen] + 0.5], axis=1) if chosen else None
    labels = np.ones(len(chosen)) if chosen else None
    return Prompt(points=points, labels=labels, box=box, mask=low_res_logits)


def propagate_steps(
    frames: Sequence,
    start: int,
    mask: np.ndarray,
    *,
    model: Predictor | str | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    min_area: int = 1,
    n_points: int = 1,
    use_mask_input: bool = False,
) -> Iterator[PropagationStep]:
    """Yield the object on each slice it reaches: ``start + 1, start + 2, ...`` upwards until it is lost,
    then ``start - 1, start - 2, ...`` downwards (iterate it to report progress or to stop early).

    Arguments as in :func:`propagate`. Each next slice is prompted with :func:`mask_to_prompt` of the
    previous slice's mask with ``n_points`` positive points, plus its low-res logits when
    ``use_mask_input`` and the decoder takes a mask. A direction stops at the first slice whose
    predicted IoU is below ``score_threshold``, whose mask IoU with the previous mask is below
    ``min_overlap``, or whose mask has fewer than ``min_area`` pixels.
    """
    from ..api import get_model  # the public API module imports this one

    predictor = get_model(model)
    n = len(frames)
    mask = _check_start(n, start, mask)
    use_mask_input = use_mask_input and predictor.accepts_mask_input
    for direction in (1, -1):
        previous, logits = mask, None
        for index in range(start + direction, n if direction > 0 else -1, direction):
            embedding = predictor.embed(frames[index])
            if embedding.original_size != mask.shape:
                raise ValueError(
                    f"slice {index} has size {embedding.original_size}, the start mask {mask.shape}; "
                    "all slices must have the mask's (H, W)"
                )
            prompt = mask_to_prompt(previous, n_points, logits if use_mask_input else None)
            prediction = predictor.predict_prompts(embedding, [prompt], multimask=False)[0]
            current, score = prediction.masks[0], float(prediction.scores[0])
            overlap = _mask_iou(previous, current)
            if score < score_threshold or overlap < min_overlap or current.sum() < max(min_area, 1):
                break
            yield PropagationStep(index, current, score, overlap)
            previous, logits = current, prediction.low_res_logits[0]


def propagate(
    frames: Sequence, start: int, mask: np.ndarray, *, model: Predictor | str | None = None, **options
) -> Propagation:
    """Follow the object of ``mask`` (H, W) bool on slice ``start`` through ``frames`` in both directions.

    frames: a (Z, H, W) or (Z, H, W, C) array, or a sequence of Z images of one size (anything
    :func:`unisam.images.load_image` accepts). model: a Predictor or a registered name (default model
    when None). Each next slice is prompted from the previous slice's mask (:func:`mask_to_prompt`).
    ``options`` are :func:`propagate_steps`' settings: ``n_points`` (positive points per prompt, 1),
    ``use_mask_input`` (also pass the previous logits, False); a direction stops at the first slice
    whose predicted IoU is below ``score_threshold`` (0.75), whose mask IoU with the previous slice's
    mask is below ``min_overlap`` (0.3), or whose mask has fewer than ``min_area`` pixels (1); that
    slice and those beyond stay empty.
    """
    mask = _check_start(len(frames), start, mask)
    masks = np.zeros((len(frames), *mask.shape), dtype=bool)
    scores = np.full(len(frames), np.nan, dtype=np.float32)
    masks[start] = mask
    first = last = start
    for step in propagate_steps(frames, start, mask, model=model, **options):
        masks[step.index], scores[step.index] = step.mask, step.score
        first, last = min(first, step.index), max(last, step.index)
    return Propagation(masks=masks, scores=scores, start=start, first=first, last=last)


def _check_start(n: int, start: int, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if not 0 <= start < n:
        raise ValueError(f"start slice {start} is outside the stack of {n} slices")
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"the start mask must be a non-empty (H, W) bool array; got shape {mask.shape}")
    return mask


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0
