"""Prompts (points, box, previous mask) and their validation against an image."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .masks import interior_points, masks_to_boxes

# Point labels of SAM's prompt encoder: clicks (background / foreground), a padding point, box corners.
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1.0, 0.0, 1.0, 2.0, 3.0


_UNSET: Any = object()

EDGE_TOLERANCE = 0.5  # pixels: prompt coordinates this close outside the image are moved onto its edge


@dataclass(frozen=True, init=False)
class Prompt:
    """One object to segment, in original-image pixel coordinates.

    points: (N, 2) float xy; point_labels: (N,) click polarity, 1 = foreground, 0 = background
    (default all foreground); box: (4,) float pixel-edge x1, y1, x2, y2 (see :mod:`unisam.masks`);
    mask: (s, s) low-res logits returned by a previous prediction (iterative refinement);
    label: a class name carried through to the result (``Instances.labels``).
    ``labels=`` is the old spelling of ``point_labels`` (deprecated).
    """

    points: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None
    mask: np.ndarray | None
    label: str | None

    def __init__(self, points=None, point_labels=None, box=None, mask=None, label=None, *, labels=_UNSET):
        point_labels = renamed_argument("labels", labels, "point_labels", point_labels)
        for name, value in zip(self.__dataclass_fields__, (points, point_labels, box, mask, label)):
            object.__setattr__(self, name, value)

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else len(self.points)

    @property
    def is_single_point(self) -> bool:
        """True for the ambiguous case (one click, no box, no mask) where multimask output helps."""
        return self.num_points == 1 and self.box is None and self.mask is None


def renamed_argument(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of an argument renamed from ``old`` to ``new``: the old spelling still works for one
    release, with a ``DeprecationWarning``; both at once is an error."""
    if old_value is _UNSET:
        return new_value
    if new_value is not None:
        raise ValueError(f"give {new}= only ({old}= is its old name)")
    warnings.warn(f"{old}= is deprecated, use {new}= (click polarity: 1 = foreground, 0 = background)",
                  DeprecationWarning, stacklevel=3)
    return old_value


def mask_to_prompt(mask: np.ndarray, n_points: int = 1, low_res_logits: np.ndarray | None = None) -> Prompt:
    """A prompt that asks for the object of ``mask`` (H, W) bool: its pixel-edge box, ``n_points``
    positive points at the centres of pixels deep inside it (:func:`unisam.masks.interior_points`) and
    optional previous ``low_res_logits`` (s, s) as mask input."""
    mask = np.asarray(mask, dtype=bool)
    pixels = interior_points(mask, n_points)
    box = masks_to_boxes(mask[None])[0].astype(np.float64)
    points = pixels + 0.5 if len(pixels) else None
    return Prompt(points=points, point_labels=np.ones(len(pixels)) if len(pixels) else None, box=box,
                  mask=low_res_logits)


def make_prompt(
    points=None, point_labels=None, box=None, mask=None, label: str | None = None, *, image_size: tuple[int, int]
) -> Prompt:
    """Validate raw prompt values against an image of ``image_size`` = (H, W); return a :class:`Prompt`.

    One rule for points and boxes: a prompt must lie inside the image, ``0 <= x <= W`` and
    ``0 <= y <= H`` in pixel-edge coordinates (a box's corners included). Coordinates at most
    :data:`EDGE_TOLERANCE` (half a pixel) beyond an edge, as rounding of relative or pixel-centre
    coordinates gives, are moved onto the edge; anything further out is a ``ValueError`` naming the
    point or box and the image size (clip a box that you mean to cut at the border yourself, e.g.
    ``np.clip(box, 0, [W, H, W, H])``). A box must have ``x1 < x2`` and ``y1 < y2``. Point labels
    default to all-foreground. Every error is a ``ValueError`` with a message that names the problem.
    """
    height, width = image_size
    pts = lbl = bx = msk = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.size == 0:
            pts = None
        else:
            pts = pts.reshape(-1, 2) if pts.ndim == 1 and pts.size == 2 else pts
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise ValueError(f"points must have shape (N, 2) as x, y pixels; got {np.shape(points)}")
            if not np.isfinite(pts).all():
                raise ValueError("points contain NaN or infinite values")
            outside = _outside(pts[:, 0], width) | _outside(pts[:, 1], height)
            if outside.any():
                bad = pts[outside][0]
                raise ValueError(
                    f"point ({bad[0]:g}, {bad[1]:g}) is outside the image (width {width}, height {height}); "
                    "points are x, y pixel coordinates"
                )
            pts = np.clip(pts, 0.0, [width, height])
    if pts is not None:
        if point_labels is None:
            lbl = np.ones(len(pts), dtype=np.float64)
        else:
            lbl = np.asarray(point_labels, dtype=np.float64).reshape(-1)
            if len(lbl) != len(pts):
                raise ValueError(f"got {len(pts)} points but {len(lbl)} point labels")
            if not np.isin(lbl, (0, 1)).all():
                raise ValueError(f"point labels must be 1 (foreground) or 0 (background); got {np.unique(lbl)}")
    elif point_labels is not None and np.size(point_labels) > 0:
        raise ValueError("point labels were given without points")
    if box is not None:
        bx = np.asarray(box, dtype=np.float64).reshape(-1)
        if bx.shape != (4,):
            raise ValueError(f"box must be 4 numbers x1, y1, x2, y2; got shape {np.shape(box)}")
        if not np.isfinite(bx).all():
            raise ValueError("box contains NaN or infinite values")
        x1, y1, x2, y2 = bx
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"box must satisfy x1 < x2 and y1 < y2 (x1, y1, x2, y2 order); got {bx.tolist()}")
        if _outside(bx[::2], width).any() or _outside(bx[1::2], height).any():
            where = "lies outside" if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height else "reaches outside"
            raise ValueError(
                f"box {_numbers(bx)} {where} the image (width {width}, height {height}); boxes, like points, "
                f"must lie inside it: 0 <= x1 < x2 <= {width}, 0 <= y1 < y2 <= {height}"
            )
        bx = np.clip(bx, 0.0, [width, height, width, height])
        if bx[2] <= bx[0] or bx[3] <= bx[1]:
            raise ValueError(f"box {_numbers(np.asarray(box, dtype=np.float64))} has no area inside the image")
    if mask is not None:
        msk = np.asarray(mask, dtype=np.float32)
        msk = msk.reshape(msk.shape[-2:]) if msk.ndim > 2 and np.prod(msk.shape[:-2]) == 1 else msk
        if msk.ndim != 2 or msk.shape[0] != msk.shape[1]:
            raise ValueError(f"mask prompt must be the (s, s) low-res logits of a prediction; got {np.shape(mask)}")
        if not np.isfinite(msk).all():
            raise ValueError("mask prompt contains NaN or infinite values")
    if pts is None and bx is None and msk is None:
        raise ValueError("empty prompt: give at least one point, a box or a mask")
    return Prompt(points=pts, point_labels=lbl, box=bx, mask=msk, label=label)


def _outside(values: np.ndarray, size: int) -> np.ndarray:
    return (values < -EDGE_TOLERANCE) | (values > size + EDGE_TOLERANCE)


def _numbers(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def collect_prompts(
    prompts: Prompt | Sequence[Prompt] | None, points=None, point_labels=None, box=None, *, image_size: tuple[int, int]
) -> list[Prompt]:
    """The validated prompts of a ``segment`` call: ``prompts`` (one or many), or the fields of a single
    prompt as ``points`` / ``point_labels`` / ``box`` (not both ways at once)."""
    if prompts is None:
        return [make_prompt(points, point_labels, box, image_size=image_size)]
    if points is not None or point_labels is not None or box is not None:
        raise ValueError("give either prompts or points/point_labels/box, not both")
    items = [prompts] if isinstance(prompts, Prompt) else list(prompts)
    if not items:
        raise ValueError("no prompts given")
    if not all(isinstance(p, Prompt) for p in items):
        raise ValueError("prompts must be unisam.Prompt objects")
    return [make_prompt(p.points, p.point_labels, p.box, p.mask, p.label, image_size=image_size) for p in items]
