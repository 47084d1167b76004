"""Propagate one object's mask through a z-stack or a sequence of frames, slice by slice: the
one-object case of :mod:`unisam.runtime.track`.

From a mask on a start slice, each neighbouring slice is prompted with what the previous slice gave:
the box of its mask plus positive points deep inside it (:func:`unisam.prompts.mask_to_prompt`), and,
when the decoder takes one, the previous prediction's low-resolution logits as mask input.
Propagation runs in both directions and stops on each side when the object is lost (see
:class:`StopRules`; by default at the first miss, with no motion model). Each slice is embedded once
through the predictor's caches, and only the slices that are reached are embedded at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..instances import Instances
from .predictor import Predictor
from .track import StopRules, track_objects

__all__ = ["StopRules", "check_start", "propagate_object"]


def propagate_object(
    frames: Sequence, start: int, mask: np.ndarray, predictor: Predictor, rules: StopRules = StopRules(),
    object_id: int = 1,
) -> Iterator[tuple[int, Instances]]:
    """Yield ``(index, Instances)`` of the object for each slice it reaches: ``start`` (``mask``, score
    1.0), then ``start + 1, start + 2, ...`` upwards until it is lost, then ``start - 1, ...``
    downwards; ``ids == [object_id]``, scores the predicted IoU.

    frames: Z images of one size (anything :func:`unisam.images.load_image` accepts), indexable
    lazily. ``mask``: the object on slice ``start``.
    """
    mask = check_start(len(frames), start, mask)
    given = Instances.from_masks(mask[None], np.ones(1, np.float32), ids=np.array([object_id]))
    return track_objects(frames, {start: given}, predictor, rules)


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
