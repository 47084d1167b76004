"""Large images: segment in overlapping tiles near the model's input size instead of one downscaled pass.

A model with a 256- or 1024-pixel input shrinks a 4000-pixel image 4-16 times, and small objects
vanish. Here the image is cut into overlapping tiles (:func:`tile_boxes`), each tile is embedded once
(cached by content), and results are mapped back to full-image coordinates:

- :func:`segment_everything_tiled`: automatic masks per tile; masks cut by an inner tile edge are
  dropped (the overlap lets another tile see the whole object), and duplicates from overlapping tiles
  are removed by box NMS. An optional pass over the whole (downscaled) image adds objects too large
  for any tile, tile masks winning over it where both found the same object.
- :func:`segment_prompts_tiled`: prompts, each decoded in the tile that contains it (the nearest such
  tile), so a click on a large image is segmented at (near) full resolution.

The public entry points are ``unisam.segment(..., tiles=...)`` and ``unisam.segment_everything(...,
tiles=...)``; these functions take a loaded image and a :class:`Predictor`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..instances import Instances
from ..masks import masks_to_boxes
from ..prompts import Prompt, collect_prompts
from .cache import Embedding
from .everything import (
    EverythingParams,
    is_box_near_crop_edge,
    nms,
    segment_everything,
    tile_boxes,
    watershed_everything,
)
from .predictor import Predictor

Box = tuple[int, int, int, int]
# Distance (pixels) within which a mask's box counts as cut by an inner tile edge.
TILE_EDGE_TOLERANCE = 4.0


@dataclass(frozen=True)
class Tiling:
    """How a large image is cut: ``size`` tile side (default the model's input size), ``overlap``
    pixels shared by neighbouring tiles (default a quarter tile; objects up to about that size are
    seen whole by some tile). For segment-everything, ``whole_image`` adds one pass over the whole
    (downscaled) image for objects larger than that, and ``nms_thresh`` is the box IoU above which two
    masks from different passes are one object (tile masks win over whole-image ones, then higher
    scores)."""

    size: int | None = None
    overlap: int | None = None
    whole_image: bool = True
    nms_thresh: float = 0.7

    def side(self, predictor: Predictor) -> int:
        """The tile side for ``predictor`` (pixels)."""
        return predictor.spec.image_size if self.size is None else int(self.size)

    def tiles(self, image_size: tuple[int, int], predictor: Predictor) -> list[Box]:
        """The tiles of an ``(H, W)`` image for ``predictor`` (see :func:`tile_boxes`)."""
        size = self.side(predictor)
        return tile_boxes(image_size, size, size // 4 if self.overlap is None else int(self.overlap))


def segment_everything_tiled(
    image: np.ndarray, predictor: Predictor, params: EverythingParams, tiling: Tiling, progress: bool = False
) -> Instances:
    """Automatic instance masks of a large ``(H, W, 3)`` uint8 image, sorted by predicted IoU.

    Every tile (and, with ``tiling.whole_image``, the whole image) goes through
    :func:`segment_everything` with ``params``; masks cut by an inner tile edge are dropped, duplicates
    removed by box NMS. The watershed mode keeps each object from its nearest tile instead. An image no
    larger than one tile gives exactly the untiled result.
    """
    height, width = image.shape[:2]
    tiles = tiling.tiles((height, width), predictor)
    if len(tiles) == 1:
        return segment_everything(image, predictor, params, progress=progress)
    if params.watershed_seed_thresh > 0:  # each object from the tile whose centre is nearest (no NMS)
        return watershed_everything(image, predictor, params, progress, tiles)
    whole: Box = (0, 0, width, height)
    parts: list[tuple[Instances, Box]] = []  # each tile's masks stay tile-sized until the end
    for tile in tqdm(tiles, desc="segment everything (tiles)", unit="tile", disable=not progress):
        part = segment_everything(_crop(image, tile), predictor, params)
        cut = is_box_near_crop_edge(_shift(part.boxes, tile), tile, whole, TILE_EDGE_TOLERANCE)
        parts.append((part[~cut], tile))
    if tiling.whole_image:
        parts.append((segment_everything(image, predictor, params), whole))
    boxes = np.concatenate([_shift(part.boxes, tile) for part, tile in parts])
    scores = np.concatenate([part.scores for part, _ in parts])
    from_tile = np.concatenate([np.full(len(part), tile != whole) for part, tile in parts])
    source = [(k, i) for k, (part, _) in enumerate(parts) for i in range(len(part))]
    priority = np.empty(len(scores), dtype=np.float64)  # tile masks first, then by score
    priority[np.lexsort((-scores, ~from_tile))] = -np.arange(len(scores), dtype=np.float64)
    keep = nms(boxes, priority, tiling.nms_thresh)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    masks = np.zeros((len(keep), height, width), dtype=bool)
    for mask, j in zip(masks, keep):
        part, (x0, y0, x1, y1) = parts[source[j][0]]
        mask[y0:y1, x0:x1] = part.masks[source[j][1]]
    return Instances(masks=masks, boxes=boxes[keep], scores=scores[keep])


def segment_prompts_tiled(
    image: np.ndarray, predictor: Predictor, prompts: Sequence[Prompt], tiling: Tiling, multimask: bool | None
) -> Instances:
    """Validated prompts on a large ``(H, W, 3)`` uint8 image, each decoded in the tile that contains all
    its points and box and whose centre is nearest to the prompt's (or, when no tile contains it, in a
    tile-sized window centred on it, grown to hold it). Masks come back at the full image size. Mask
    prompts are refused (their logits belong to one embedding). Equals the untiled result for an image
    no larger than one tile.
    """
    height, width = image.shape[:2]
    tiles = tiling.tiles((height, width), predictor)
    parts = []
    for p in prompts:
        if p.mask is not None:
            raise ValueError("tiled segmentation takes points and boxes, not mask prompts")
        tile = _tile_for(_extent(p), tiles, tiling.side(predictor), (height, width))
        shift = np.array([tile[0], tile[1]], dtype=np.float64)
        local = Prompt(
            points=None if p.points is None else p.points - shift,
            point_labels=p.point_labels,
            box=None if p.box is None else p.box - np.tile(shift, 2),
            label=p.label,
        )
        embedding = predictor.embed(_crop(image, tile))
        local = collect_prompts(local, image_size=embedding.original_size)
        found = predictor.segment_prompts(embedding, local, multimask)
        parts.append(_paste(found, tile, (height, width)))
    return Instances.concat(parts)


def embed_tiles(image: np.ndarray, predictor: Predictor, tiling: Tiling) -> list[Embedding]:
    """The embedding of every tile of a ``(H, W, 3)`` uint8 image (as the tiled functions cut it)."""
    return [predictor.embed(_crop(image, tile)) for tile in tiling.tiles(image.shape[:2], predictor)]


def _crop(image: np.ndarray, tile: Box) -> np.ndarray:
    x0, y0, x1, y1 = tile
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def _shift(boxes: np.ndarray, tile: Box) -> np.ndarray:
    """Tile-local (N, 4) boxes -> full-image coordinates."""
    return boxes + np.array([tile[0], tile[1], tile[0], tile[1]], dtype=boxes.dtype)


def _paste(part: Instances, tile: Box, image_size: tuple[int, int]) -> Instances:
    """Instances of a tile placed in the full image (masks, boxes shifted; other fields kept)."""
    x0, y0, x1, y1 = tile
    masks = np.zeros((len(part), *image_size), dtype=bool)
    masks[:, y0:y1, x0:x1] = part.masks
    return Instances(masks, masks_to_boxes(masks), part.scores, part.labels, part.label_scores, part.ids)


def _extent(prompt: Prompt) -> np.ndarray:
    """x1, y1, x2, y2 enclosing a prompt's points and box."""
    corners = [] if prompt.points is None else [prompt.points]
    if prompt.box is not None:
        corners.append(prompt.box.reshape(2, 2))
    xy = np.concatenate(corners)
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def _tile_for(extent: np.ndarray, tiles: list[Box], tile_size: int, image_size: tuple[int, int]) -> Box:
    """The tile that contains ``extent`` with the nearest centre; else a window centred on it."""
    boxes = np.asarray(tiles, dtype=np.float64)
    inside = np.all((boxes[:, :2] <= extent[:2]) & (boxes[:, 2:] >= extent[2:]), axis=1)
    centre = (extent[:2] + extent[2:]) / 2
    if inside.any():
        distance = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - centre, axis=1)
        return tiles[int(np.flatnonzero(inside)[np.argmin(distance[inside])])]
    height, width = image_size
    window = []
    for c, lo, hi, side in ((centre[0], extent[0], extent[2], width), (centre[1], extent[1], extent[3], height)):
        half = max(tile_size, math.ceil(hi - lo) + 2) / 2
        start = int(max(0, min(math.floor(c - half), side - 2 * half)))
        window.append((start, int(min(side, math.ceil(start + 2 * half)))))
    return (window[0][0], window[1][0], window[0][1], window[1][1])
