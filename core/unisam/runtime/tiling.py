"""Large images: segment in overlapping tiles near the model's input size instead of one downscaled pass.

A model with a 256- or 1024-pixel input shrinks a 4000-pixel image 4-16 times, and small objects
vanish. Here the image is cut into overlapping tiles (:func:`tile_boxes`), each tile is embedded once
(cached by content), and results are mapped back to full-image coordinates:

- :func:`segment_everything_tiled`: automatic masks per tile; masks cut by an inner tile edge are
  dropped (the overlap lets another tile see the whole object), and duplicates from overlapping tiles
  are removed by box NMS. An optional pass over the whole (downscaled) image adds objects too large
  for any tile, tile masks winning over it where both found the same object.
- :func:`segment_tiled`: prompts, each decoded in the tile that contains it (the nearest such tile),
  so a click on a large image is segmented at (near) full resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ..images import load_image
from ..instances import Instances, masks_to_boxes
from ..prompts import Prompt, collect_prompts
from .cache import Embedding
from .everything import is_box_near_crop_edge, nms
from .everything import segment_everything as _segment_everything
from .predictor import Predictor

Box = tuple[int, int, int, int]
# Distance (pixels) within which a mask's box counts as cut by an inner tile edge.
TILE_EDGE_TOLERANCE = 4.0


def tile_boxes(image_size: tuple[int, int], tile_size: int, overlap: int) -> list[Box]:
    """Tiles ``(x0, y0, x1, y1)`` (x1, y1 exclusive) covering an ``(H, W)`` image, row-major: each at most
    ``tile_size`` a side, neighbours overlapping by at least ``overlap`` pixels, spread evenly so that
    the last tile ends at the image edge. An image no larger than a tile is one tile."""
    if tile_size < 1 or not 0 <= overlap < tile_size:
        raise ValueError(f"need tile_size >= 1 and 0 <= overlap < tile_size; got {tile_size}, {overlap}")
    starts = [_starts(side, tile_size, overlap) for side in image_size]
    height, width = image_size
    return [(x, y, min(x + tile_size, width), min(y + tile_size, height)) for y in starts[0] for x in starts[1]]


def segment_everything_tiled(
    image,
    *,
    model: Predictor | str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    whole_image: bool = True,
    nms_thresh: float = 0.7,
    **params,
) -> Instances:
    """Automatic instance masks of a large image, sorted by predicted IoU (``scores``), boxes inclusive.

    tile_size: tile side (default the model's input size); overlap: pixels shared by neighbouring
    tiles (default a quarter tile): objects up to about ``overlap`` pixels across are seen whole by
    some tile. whole_image: also run one pass over the whole image, for objects larger than that.
    nms_thresh: box IoU above which two masks from different tiles are one object (tile masks win
    over whole-image ones, then higher scores). ``params`` go to
    :func:`unisam.runtime.everything.segment_everything` for every tile (points_per_side,
    pred_iou_thresh, stability_score_thresh, ...; the model's :func:`unisam.everything_defaults` for
    those not given). An image no larger than one tile gives exactly :func:`unisam.segment_everything`'s
    result.
    """
    from ..api import everything_defaults

    predictor = _predictor(model)
    params = {**everything_defaults(predictor), **params}
    image = load_image(image)
    height, width = image.shape[:2]
    tiles = tile_boxes((height, width), *_tiling(predictor, tile_size, overlap))
    if len(tiles) == 1:
        return _segment_everything(image, predictor, **params)
    whole: Box = (0, 0, width, height)
    parts: list[tuple[Instances, Box]] = []  # each tile's masks stay tile-sized until the end
    for tile in tiles:
        part = _segment_everything(_crop(image, tile), predictor, **params)
        cut = is_box_near_crop_edge(_shift(part.boxes, tile), tile, whole, TILE_EDGE_TOLERANCE)
        parts.append((part[~cut], tile))
    if whole_image:
        parts.append((_segment_everything(image, predictor, **params), whole))
    boxes = np.concatenate([_shift(part.boxes, tile) for part, tile in parts])
    scores = np.concatenate([part.scores for part, _ in parts])
    from_tile = np.concatenate([np.full(len(part), tile != whole) for part, tile in parts])
    source = [(k, i) for k, (part, _) in enumerate(parts) for i in range(len(part))]
    priority = np.empty(len(scores), dtype=np.float64)  # tile masks first, then by score
    priority[np.lexsort((-scores, ~from_tile))] = -np.arange(len(scores), dtype=np.float64)
    keep = nms(boxes, priority, nms_thresh)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    masks = np.zeros((len(keep), height, width), dtype=bool)
    for mask, j in zip(masks, keep):
        part, (x0, y0, x1, y1) = parts[source[j][0]]
        mask[y0:y1, x0:x1] = part.masks[source[j][1]]
    return Instances(masks=masks, boxes=boxes[keep], scores=scores[keep])


def segment_tiled(
    image,
    prompts: Prompt | Sequence[Prompt] | None = None,
    *,
    points=None,
    labels=None,
    box=None,
    model: Predictor | str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    multimask: bool | None = None,
) -> Instances:
    """:func:`unisam.segment` for large images: each prompt is decoded in the tile of :func:`tile_boxes`
    that contains all its points and box and whose centre is nearest to the prompt's (or, when no tile
    contains it, in a tile-sized window centred on it, grown to hold it). Masks come back at the full
    image size. Prompts as in :func:`unisam.segment` (pixel x, y of the full image); mask prompts are
    not accepted (their logits belong to one embedding). Equals :func:`unisam.segment` for an image no
    larger than one tile.
    """
    from ..api import segment

    predictor = _predictor(model)
    image = load_image(image)
    height, width = image.shape[:2]
    size, lap = _tiling(predictor, tile_size, overlap)
    tiles = tile_boxes((height, width), size, lap)
    items = collect_prompts(prompts, points, labels, box, image_size=(height, width))
    parts = []
    for p in items:
        if p.mask is not None:
            raise ValueError("segment_tiled takes points and boxes, not mask prompts")
        tile = _tile_for(_extent(p), tiles, size, (height, width))
        shift = np.array([tile[0], tile[1]], dtype=np.float64)
        local = Prompt(
            points=None if p.points is None else p.points - shift,
            labels=p.labels,
            box=None if p.box is None else p.box - np.tile(shift, 2),
            label=p.label,
        )
        parts.append(
            _paste(segment(_crop(image, tile), local, model=predictor, multimask=multimask), tile, (height, width))
        )
    return Instances.concat(parts)


def embed_tiles(
    image, *, model: Predictor | str | None = None, tile_size: int | None = None, overlap: int | None = None
) -> Iterator[Embedding]:
    """Embed every tile of ``image`` (as :func:`segment_everything_tiled` and :func:`segment_tiled` cut
    it), yielding each embedding in turn, so later calls on the image hit the predictor's caches."""
    predictor = _predictor(model)
    image = load_image(image)
    for tile in tile_boxes(image.shape[:2], *_tiling(predictor, tile_size, overlap)):
        yield predictor.embed(_crop(image, tile))


def _predictor(model: Predictor | str | None) -> Predictor:
    from ..api import get_model  # the public API module imports this one

    return get_model(model)


def _tiling(predictor: Predictor, tile_size: int | None, overlap: int | None) -> tuple[int, int]:
    size = predictor.spec.image_size if tile_size is None else int(tile_size)
    return size, size // 4 if overlap is None else int(overlap)


def _starts(side: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile starts along one side: first 0, last ``side - tile``."""
    if side <= tile:
        return [0]
    n = math.ceil((side - overlap) / (tile - overlap))
    return [round(i * (side - tile) / (n - 1)) for i in range(n)]


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
