"""Propagate one object's mask through a z-stack or a sequence of frames, slice by slice.

From a mask on a start slice, each neighbouring slice is prompted with what the previous slice gave:
the box of its mask plus positive points deep inside it (:func:`unisam.prompts.mask_to_prompt`), and,
when the decoder takes one, the previous prediction's low-resolution logits as mask input.
Propagation runs in both directions and stops on each side when the object is lost (see
:class:`StopRules`). Each slice is embedded once through the predictor's caches, and only the slices
that are reached are embedded at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..masks import mask_iou
from ..prompts import mask_to_prompt
from .predictor import Predictor


@dataclass(frozen=True)
class StopRules:
    """When a direction of propagation ends: at the first slice whose predicted IoU is below
    ``score_threshold``, whose mask IoU with the previous slice's mask is below ``min_overlap``, or
    whose mask has fewer than ``min_area`` pixels. ``n_points``: positive points per prompt;
    ``use_mask_input``: also pass the previous slice's low-res logits (when the decoder takes them)."""

    score_threshold: float = 0.75
    min_overlap: float = 0.3
    min_area: int = 1
    n_points: int = 1
    use_mask_input: bool = False

    @classmethod
    def from_options(cls, **options: Any) -> StopRules:
        """Rules from keyword options; an unknown name raises a ``ValueError`` listing the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown propagation options {unknown}; known: {known}")
        return cls(**options)


def propagate_object(
    frames: Sequence, start: int, mask: np.ndarray, predictor: Predictor, rules: StopRules = StopRules()
) -> Iterator[tuple[int, np.ndarray, float]]:
    """Yield ``(index, mask (H, W) bool, predicted IoU)`` for each slice the object reaches:
    ``start + 1, start + 2, ...`` upwards until it is lost, then ``start - 1, start - 2, ...`` downwards.

    frames: Z images of one size (anything :func:`unisam.images.load_image` accepts), indexable
    lazily. ``mask``: the object on slice ``start``.
    """
    n = len(frames)
    mask = check_start(n, start, mask)
    use_mask_input = rules.use_mask_input and predictor.accepts_mask_input
    for direction in (1, -1):
        previous, logits = mask, None
        for index in range(start + direction, n if direction > 0 else -1, direction):
            embedding = predictor.embed(frames[index])
            if embedding.original_size != mask.shape:
                raise ValueError(
                    f"slice {index} has size {embedding.original_size}, the start mask {mask.shape}; "
                    "all slices must have the mask's (H, W)"
                )
            prompt = mask_to_prompt(previous, rules.n_points, logits if use_mask_input else None)
            prediction = predictor.predict_prompts(embedding, [prompt], multimask=False)[0]
            current, score = prediction.masks[0], float(prediction.scores[0])
            lost = score < rules.score_threshold or mask_iou(previous, current) < rules.min_overlap
            if lost or current.sum() < max(rules.min_area, 1):
                break
            yield index, current, score
            previous, logits = current, prediction.low_res_logits[0]


def check_start(n: int, start: int, mask: np.ndarray) -> np.ndarray:
    """The start mask as bool, after checking it against a stack of ``n`` slices."""
    mask = np.asarray(mask, dtype=bool)
    if n == 0:
        raise ValueError("the stack has no slices")
    if not 0 <= start < n:
        raise ValueError(f"start slice {start} is outside the stack of {n} slices")
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"the start mask must be a non-empty (H, W) bool array; got shape {mask.shape}")
    return mask
