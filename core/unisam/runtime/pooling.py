"""Masks onto feature grids: how much of each mask falls in each cell of an encoder's output.

Both the SAM embedding and CLIP's dense features cover a padded square model input whose top-left
part is the image, resized with its aspect kept; a feature cell is ``cell`` input pixels wide.
"""

from __future__ import annotations

import numpy as np


def cell_weights(n: int, resized: int, cell: float, cells: int) -> np.ndarray:
    """``(cells, n)`` float32: how much of original pixel j (resized to ``[j, j + 1) * resized / n``)
    falls in feature cell i (``[i, i + 1) * cell``), in resized pixels."""
    scale = resized / n
    lo = np.arange(n) * scale
    edges = np.arange(cells + 1) * cell
    overlap = np.minimum(lo + scale, edges[1:, None]) - np.maximum(lo, edges[:-1, None])
    return np.maximum(overlap, 0).astype(np.float32)


def mask_cover(
    masks: np.ndarray, resized: tuple[int, int], cell: tuple[float, float], grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Area of each mask inside each feature cell, and of the whole image.

    masks: ``(N, H, W)`` bool on the original image, which the encoder saw resized to ``resized``
    ``(h, w)`` pixels; cells of ``cell`` ``(cy, cx)`` input pixels on a ``grid`` ``(gh, gw)``.
    Returns ``(N, gh * gw)`` and ``(gh * gw,)`` float32 areas in resized pixels. Each mask is
    projected from its bounding crop, so the cost is its size, not the image's.
    """
    rows = cell_weights(masks.shape[1], resized[0], cell[0], grid[0])  # (gh, H)
    cols = cell_weights(masks.shape[2], resized[1], cell[1], grid[1])  # (gw, W)
    image = np.outer(rows.sum(axis=1), cols.sum(axis=1)).reshape(-1)
    cover = np.zeros((len(masks), grid[0] * grid[1]), np.float32)
    any_rows, any_cols = masks.any(axis=2), masks.any(axis=1)
    for i, mask in enumerate(masks):
        ys, xs = np.flatnonzero(any_rows[i]), np.flatnonzero(any_cols[i])
        if len(ys):
            y, x = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
            cover[i] = (rows[:, y] @ mask[y, x].astype(np.float32) @ cols[:, x].T).reshape(-1)
    return cover, image


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0).astype(np.float32)
