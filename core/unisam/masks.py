"""Mask primitives shared by every layer of unisam (NumPy, SciPy and pycocotools only).

Box convention, the one used everywhere in unisam (prompts, results, training, every adapter):
``(x1, y1, x2, y2)`` in pixel-edge coordinates. Pixel ``(col, row)`` covers ``[col, col + 1) x
[row, row + 1)`` and its centre is ``(col + 0.5, row + 0.5)``; a mask whose leftmost column is ``a``
and rightmost ``b`` has ``x1 = a`` and ``x2 = b + 1``, so ``x2 - x1`` is its width in pixels (COCO's
``bbox`` width, FiftyOne's and Label Studio's box extent). A one-pixel mask at column 5, row 7 has
box ``(5, 7, 6, 8)``; an empty mask has ``(0, 0, 0, 0)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` bool -> ``(N, 4)`` float32 pixel-edge ``(x1, y1, x2, y2)``; empty masks give zeros."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    if masks.size == 0:
        return boxes
    rows = masks.any(axis=2)  # (N, H)
    cols = masks.any(axis=1)  # (N, W)
    present = rows.any(axis=1)
    h, w = masks.shape[1:]
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    boxes[~present] = 0.0
    return boxes


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``(H, W)`` bool masks; 0 when both are empty."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def interior_points(mask: np.ndarray, n: int = 1) -> np.ndarray:
    """``n`` pixels deep inside an ``(H, W)`` bool mask, as ``(k, 2)`` int64 ``(col, row)``, k = min(n, ...).

    Depth is the Euclidean distance to the nearest pixel outside the mask (the frame border counts as
    outside). The first point is the deepest pixel (the first in row-major order on ties); each next one
    is, among the inner half of the object (depth >= half the maximum), the pixel farthest from those
    already chosen. Deterministic. Raises ``ValueError`` for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"need a non-empty (H, W) mask; got shape {mask.shape}, {int(mask.sum())} pixels")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rows, cols = np.nonzero(mask)
    depth = _depth(mask)[rows, cols]
    inner = np.flatnonzero(depth >= depth.max() / 2)  # raster order, as np.nonzero gives them
    chosen = [int(inner[np.argmax(depth[inner])])]
    dist = np.full(inner.size, np.inf)
    while len(chosen) < min(n, inner.size):
        last = chosen[-1]
        dist = np.minimum(dist, np.hypot(rows[inner] - rows[last], cols[inner] - cols[last]))
        chosen.append(int(inner[np.argmax(dist)]))
    chosen = chosen[:n]
    return np.stack([cols[chosen], rows[chosen]], axis=1).astype(np.int64).reshape(-1, 2)


def deepest_point(mask: np.ndarray) -> tuple[float, tuple[int, int]]:
    """The largest depth in an ``(H, W)`` bool mask (distance to the outside, the frame border counting
    as outside) and the first pixel (row-major) that has it, as ``(depth, (col, row))``; an empty mask
    gives ``(0.0, (0, 0))``."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0, (0, 0)
    depth = _depth(mask)
    flat = int(depth.argmax())
    return float(depth.flat[flat]), (flat % mask.shape[1], flat // mask.shape[1])


def _depth(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` float64 Euclidean distance of each mask pixel to the nearest pixel outside the mask or
    the frame (0 outside the mask)."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def masks_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """``(N, H, W)`` bool -> N COCO compressed RLEs ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """One COCO RLE (compressed, counts str/bytes, or uncompressed, counts a list) -> ``(H, W)`` bool."""
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w or min(counts, default=0) < 0:
            raise ValueError(f"RLE counts do not describe a {h}x{w} mask")
        obj = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else bytes(counts)}
    with warnings.catch_warnings():
        # pycocotools' Cython decode triggers NumPy 2's __array__(copy=...) deprecation warning.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return mask_utils.decode(obj).astype(bool)
        except ValueError as exc:
            raise ValueError(f"RLE counts do not describe a {h}x{w} mask (corrupt or truncated): {exc}") from None


def rles_to_masks(rles: Sequence[dict[str, Any]]) -> np.ndarray:
    """COCO RLEs of one image -> ``(N, H, W)`` bool."""
    return np.stack([rle_to_mask(r) for r in rles])
