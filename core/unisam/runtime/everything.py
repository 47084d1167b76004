"""Automatic "segment everything": prompt a grid of points, keep the good masks, remove duplicates.

The algorithm of SAM's automatic mask generator, in NumPy, against any predictor that follows
:class:`MaskPredictor`. Per crop (the whole image, plus ``crop_n_layers`` layers of overlapping
crops): embed the crop, decode each grid point (three masks per point), drop masks whose predicted
IoU is too low *before* upscaling them, upscale the survivors in memory-bounded chunks, drop unstable
masks and masks cut by a crop edge, then NMS by box IoU within the crop and across crops. Masks are
kept cropped to their boxes until the end, so memory grows with the objects found, not the grid.

Dense small objects (nuclei, cells, coins): ``object_size`` (their typical diameter in pixels) replaces
the crop layers and the grid with ones made for that size (:func:`object_crops`): crops
``OBJECTS_PER_CROP`` object sizes a side, so that an object fills a useful part of the model's input,
overlapping by two object sizes, with a grid point every ``POINT_SPACING`` object sizes (about four
points on each object); ``mask_nms_thresh`` removes the near-duplicates that box NMS misses on small
objects (a few pixels' difference moves a small box's IoU below 0.7).

``watershed_seed_thresh`` > 0 swaps the point grid for the watershed mode of
:mod:`unisam.runtime.watershed` (models with an instance head; same crops).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ..images import load_image
from ..instances import Instances
from ..masks import masks_to_boxes
from .cache import Embedding

# Upper bound on the float32 full-resolution logits upscaled at once.
UPSCALE_CHUNK_BYTES = 64 * 2**20
# Distance (pixels) within which a box is "at" a crop edge; SAM's value.
CROP_EDGE_TOLERANCE = 20.0
_CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)
# With object_size: crop side and grid spacing, in object sizes (on coins and a HeLa frame,
# benchmarks/real_images.py, every reference object but one then had a candidate at IoU >= 0.5).
OBJECTS_PER_CROP = 10.0
POINT_SPACING = 0.5


# The algorithm works on SAM's inclusive boxes (x2, y2 = last column, row), as SAM's automatic mask
# generator does, so that NMS and crop-edge decisions match it; results use unisam's pixel edges.
_TO_PIXEL_EDGES = np.array([0, 0, 1, 1], dtype=np.float32)


def _inclusive_boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` non-empty bool masks -> ``(N, 4)`` float32 SAM-style inclusive boxes."""
    return masks_to_boxes(masks) - _TO_PIXEL_EDGES


def _option(default: float, help: str, common: bool = False, minimum: float = 0, maximum: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "common": common, "minimum": minimum, "maximum": maximum})


class MaskPredictor(Protocol):
    """What :func:`segment_everything` needs from a model."""

    def embed(self, image: np.ndarray) -> Embedding:
        """``(H, W, 3)`` uint8 RGB -> its embedding."""
        ...

    def decode(
        self, embedding: Embedding, point_coords: np.ndarray, point_labels: np.ndarray, multimask: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(B, N, 2)`` float32 pixel ``(x, y)`` in the embedded image and labels ``(B, N)``
        float32 -> (low-res logits ``(B, K, h4, w4)`` float32, predicted IoU ``(B, K)`` float32), K = 3
        if ``multimask`` else 1."""
        ...

    def upscale(self, embedding: Embedding, low_res_logits: np.ndarray) -> np.ndarray:
        """Low-res logits ``(M, h4, w4)`` -> ``(M, H, W)`` float32 logits at the embedded image's size."""
        ...


@dataclass(frozen=True)
class Option:
    """One option of :class:`EverythingParams`: its type, SAM's default, what it does, whether hosts
    show it in their forms (``common``), and the range a form should offer (``maximum`` None: no
    upper bound)."""

    name: str
    kind: type
    default: float
    help: str
    common: bool
    minimum: float = 0
    maximum: float | None = None


@dataclass(frozen=True)
class EverythingParams:
    """The options of :func:`segment_everything` (SAM's automatic mask generator's, with its defaults).

    Fields marked ``common`` in their metadata are the ones hosts show in their forms; ``help`` says
    what each does. :func:`unisam.everything_defaults` gives a model's own defaults.
    """

    points_per_side: int = _option(32, "grid points per side of each crop", common=True, minimum=1, maximum=64)
    points_per_batch: int = _option(64, "points decoded in one decoder call", minimum=1)
    pred_iou_thresh: float = _option(0.88, "keep masks whose predicted IoU is above this", common=True, maximum=1)
    stability_score_thresh: float = _option(
        0.95, "keep masks whose IoU between logit cut-offs +offset and -offset is at least this", common=True,
        maximum=1,
    )
    stability_score_offset: float = _option(1.0, "the logit offset of the stability score")
    box_nms_thresh: float = _option(0.7, "box IoU above which two masks of one crop are one object", common=True,
                                   maximum=1)
    crop_n_layers: int = _option(0, "layers of smaller crops besides the whole image (layer i: 4**i crops)")
    crop_nms_thresh: float = _option(0.7, "box IoU above which masks of different crops are one object", maximum=1)
    crop_overlap_ratio: float = _option(512 / 1500, "overlap of first-layer crops, a fraction of the short side",
                                         maximum=1)
    crop_n_points_downscale_factor: int = _option(1, "layer i uses points_per_side / factor**i points a side",
                                                  minimum=1)
    min_mask_region_area: int = _option(
        0, "fill holes and drop islands smaller than this (pixels); 0 = off", common=True
    )
    object_size: float = _option(
        0.0, "typical object diameter (pixels): crops and grid made for objects of that size (dense nuclei, "
        "cells) instead of points_per_side and crop layers; 0 = off", common=True,
    )
    mask_nms_thresh: float = _option(
        0.0, "mask IoU above which two masks are one object (after box NMS; 0.3 suits dense small objects); 0 = off",
        maximum=1,
    )
    watershed_seed_thresh: float = _option(
        0.0, "> 0: objects from the model's instance head and a seeded watershed instead of the point grid "
        "(seeds where the predicted distance to the object's edge, 0-1, is above this; 0.3 suits nuclei); "
        "the grid's options then do nothing; 0 = off", common=True, maximum=1,
    )

    def __post_init__(self) -> None:
        for option in self.options():
            value = getattr(self, option.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"everything option {option.name} must be a number, got {value!r}")
            if option.kind is int and float(value) != int(value):
                raise ValueError(f"everything option {option.name} must be a whole number, got {value!r}")
            object.__setattr__(self, option.name, option.kind(value))
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be >= 1")
        if self.crop_n_layers < 0 or self.crop_n_points_downscale_factor < 1:
            raise ValueError("crop_n_layers must be >= 0 and crop_n_points_downscale_factor >= 1")
        if self.object_size < 0 or not 0 <= self.mask_nms_thresh <= 1:
            raise ValueError("object_size must be >= 0 (0 = off) and mask_nms_thresh within [0, 1] (0 = off)")
        if not 0 <= self.watershed_seed_thresh < 1:
            raise ValueError("watershed_seed_thresh must be within [0, 1) (0 = off)")
        if self.points_per_side // self.crop_n_points_downscale_factor**self.crop_n_layers < 1:
            raise ValueError(
                f"crop layer {self.crop_n_layers} would get no points: points_per_side={self.points_per_side} / "
                "crop_n_points_downscale_factor**crop_n_layers < 1; use fewer layers or a smaller factor"
            )

    @classmethod
    def options(cls, common_only: bool = False) -> list[Option]:
        """The options in declaration order (only those hosts show in their forms, if asked)."""
        found = [
            Option(f.name, int if f.type in ("int", int) else float, f.default, f.metadata["help"],
                   f.metadata["common"], f.metadata["minimum"], f.metadata["maximum"])
            for f in fields(cls)
        ]
        return [o for o in found if o.common or not common_only]

    @classmethod
    def names(cls, common_only: bool = False) -> list[str]:
        """The option names, in declaration order."""
        return [o.name for o in cls.options(common_only)]

    def replace(self, **changes: Any) -> EverythingParams:
        """A copy with ``changes``; unknown names raise a ``ValueError`` that lists the known ones."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown segment-everything options {unknown}; known: {self.names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


def segment_everything(
    image: np.ndarray,
    predictor: MaskPredictor,
    params: EverythingParams | None = None,
    *,
    progress: bool = False,
    **changes: Any,
) -> Instances:
    """All objects in ``image`` (anything :func:`unisam.images.load_image` accepts) as Instances sorted
    by predicted IoU (``scores``). ``params`` (default SAM's) with ``changes`` applied by name; see
    :class:`EverythingParams`. Per crop: a grid of single-point prompts, masks filtered by predicted IoU,
    stability and crop edges, box NMS within and across crops (smaller crops win), optional mask NMS
    (``mask_nms_thresh``), then optional small-region cleaning. ``object_size`` > 0 replaces the crop
    layers and grids by :func:`object_crops`. ``watershed_seed_thresh`` > 0 replaces the point grid by
    the model's instance head (:mod:`unisam.runtime.watershed`; scores are then mean foreground
    probabilities). Empty masks are always dropped. ``progress``: a tqdm bar
    over decoder batches.
    """
    p = (params or EverythingParams()).replace(**changes)
    image = load_image(image)
    height, width = image.shape[:2]
    if p.watershed_seed_thresh > 0:
        return watershed_everything(image, predictor, p, progress)
    if p.object_size > 0:
        crops = object_crops((height, width), p.object_size)
    else:
        grids = build_layer_point_grids(p.points_per_side, p.crop_n_layers, p.crop_n_points_downscale_factor)
        crop_boxes, layer_idxs = generate_crop_boxes((height, width), p.crop_n_layers, p.crop_overlap_ratio)
        crops = [(box, grids[layer]) for box, layer in zip(crop_boxes, layer_idxs)]

    total = sum(math.ceil(len(grid) / p.points_per_batch) for _, grid in crops)
    found = _Candidates()
    with tqdm(total=total, desc="segment everything", unit="batch", disable=not progress) as bar:
        for crop_box, grid in crops:
            part = _process_crop(image, crop_box, grid, predictor, p, bar)
            found.extend(part.select(nms(part.boxes, part.scores, p.box_nms_thresh)))
    if len(crops) > 1 and len(found.scores):
        prefer_small = 1.0 / found.crop_areas
        found = found.select(nms(found.boxes, prefer_small, p.crop_nms_thresh))
    if p.mask_nms_thresh > 0 and len(found.scores):
        found = found.select(found.mask_nms(p.mask_nms_thresh))

    found = found.select(np.argsort(-found.scores, kind="stable"))  # ties below favour higher IoU
    masks, boxes, scores = found.to_full_masks((height, width)), found.boxes, found.scores
    if p.min_mask_region_area > 0 and len(scores):
        nms_thresh = max(p.box_nms_thresh, p.crop_nms_thresh)
        masks, boxes, keep = _clean_small_regions(masks, p.min_mask_region_area, nms_thresh)
        masks, boxes, scores = masks[keep], boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return Instances(masks=masks[order], boxes=boxes[order] + _TO_PIXEL_EDGES, scores=scores[order])


def watershed_everything(
    image: np.ndarray,
    predictor: MaskPredictor,
    p: EverythingParams,
    progress: bool,
    tiles: list[tuple[int, int, int, int]] | None = None,
) -> Instances:
    """The watershed mode (:mod:`unisam.runtime.watershed`) on the object crops (with ``object_size``),
    else on ``tiles`` ``(x0, y0, x1, y1)`` (a large image's, see :mod:`unisam.runtime.tiling`), else on
    the whole image. Each object comes from the one crop whose centre is nearest to it."""
    from .watershed import MIN_AREA, MIN_AREA_FRACTION, watershed_instances

    height, width = image.shape[:2]
    if p.object_size > 0:
        crops = [box for box, _ in object_crops((height, width), p.object_size)]
        min_area = round(MIN_AREA_FRACTION * p.object_size**2)
    else:
        crops, min_area = tiles or [(0, 0, width, height)], MIN_AREA
    return watershed_instances(image, predictor, crops, p.watershed_seed_thresh,
                               max(min_area, p.min_mask_region_area), progress)


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``(n*n, 2)`` points ``(x, y)`` in [0, 1]: cell centres ``(i + 0.5) / n``, x varying fastest."""
    half_cell = 1 / (2 * n_per_side)
    side = np.linspace(half_cell, 1 - half_cell, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One normalised grid per crop layer; layer i has ``int(n_per_side / scale_per_layer**i)`` points a side."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """Crop boxes ``(x0, y0, x1, y1)`` (x1, y1 exclusive) and their layer indices: the whole image (layer 0),
    then for layer i = 1..n_layers a ``2**i x 2**i`` grid of crops overlapping by
    ``int(overlap_ratio * short_side * 2 / 2**i)`` pixels (SAM's layout, x-major order)."""
    height, width = image_size
    boxes: list[tuple[int, int, int, int]] = [(0, 0, width, height)]
    layers = [0]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / n))
        crop_w = math.ceil((overlap * (n - 1) + width) / n)
        crop_h = math.ceil((overlap * (n - 1) + height) / n)
        for i in range(n):
            x0 = (crop_w - overlap) * i
            for j in range(n):
                y0 = (crop_h - overlap) * j
                boxes.append((x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)))
                layers.append(layer)
    return boxes, layers


def tile_boxes(image_size: tuple[int, int], tile_size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles ``(x0, y0, x1, y1)`` (x1, y1 exclusive) covering an ``(H, W)`` image, row-major: each at most
    ``tile_size`` a side, neighbours overlapping by at least ``overlap`` pixels, spread evenly so that
    the last tile ends at the image edge. An image no larger than a tile is one tile."""
    if tile_size < 1 or not 0 <= overlap < tile_size:
        raise ValueError(f"need tile_size >= 1 and 0 <= overlap < tile_size; got {tile_size}, {overlap}")
    starts = [_starts(side, tile_size, overlap) for side in image_size]
    height, width = image_size
    return [(x, y, min(x + tile_size, width), min(y + tile_size, height)) for y in starts[0] for x in starts[1]]


def _starts(side: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile starts along one side: first 0, last ``side - tile``."""
    if side <= tile:
        return [0]
    n = math.ceil((side - overlap) / (tile - overlap))
    return [round(i * (side - tile) / (n - 1)) for i in range(n)]


def object_crops(image_size: tuple[int, int], object_size: float) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Crops ``(x0, y0, x1, y1)`` and their normalised point grids for objects about ``object_size``
    pixels across in an ``(H, W)`` image: :func:`tile_boxes` of side ``OBJECTS_PER_CROP * object_size``
    (the whole image when it is smaller) overlapping by ``2 * object_size``, each with a grid point
    every ``POINT_SPACING * object_size`` pixels along its longer side."""
    height, width = image_size
    side = int(min(max(height, width), max(2, round(OBJECTS_PER_CROP * object_size))))
    crops = tile_boxes(image_size, side, int(min(round(2 * object_size), side - 1)))
    spacing = POINT_SPACING * object_size
    return [(c, build_point_grid(max(1, math.ceil(max(c[2] - c[0], c[3] - c[1]) / spacing)))) for c in crops]


def stability_score(logits: np.ndarray, offset: float, threshold: float = 0.0) -> np.ndarray:
    """``(..., H, W)`` logits -> ``(...)`` float32: area above ``threshold + offset`` divided by area above
    ``threshold - offset`` (the IoU of the two nested masks); 0 where the larger mask is empty."""
    inner = np.count_nonzero(logits > threshold + offset, axis=(-2, -1))
    outer = np.count_nonzero(logits > threshold - offset, axis=(-2, -1))
    return np.where(outer > 0, inner / np.maximum(outer, 1), 0.0).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, 4)`` x ``(M, 4)`` xyxy boxes -> ``(N, M)`` IoU, areas ``(x2 - x1) * (y2 - y1)`` as in
    torchvision; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices ``(K,)`` int64 of the kept boxes, best score first. A box is
    dropped when its IoU with a kept, higher-scoring box exceeds ``iou_threshold``; equal scores keep
    the earlier box first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best : best + 1], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def is_box_near_crop_edge(
    boxes: np.ndarray,
    crop_box: tuple[int, int, int, int],
    image_box: tuple[int, int, int, int],
    atol: float = CROP_EDGE_TOLERANCE,
) -> np.ndarray:
    """``(N, 4)`` boxes in image coordinates -> ``(N,)`` bool: some side lies within ``atol`` pixels of the
    crop's matching side, where that side is not also the image's."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    near_crop = np.abs(boxes - np.asarray(crop_box, dtype=np.float64)) <= atol
    near_image = np.abs(boxes - np.asarray(image_box, dtype=np.float64)) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``mode="islands"``) smaller than ``area_thresh``
    pixels (8-connected) in an ``(H, W)`` bool mask; islands keeps the largest if all are small.
    Returns the mask and whether it changed."""
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    labels, n = ndimage.label(~mask if fill_holes else mask, structure=_CONNECTIVITY_8)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        return mask | np.isin(labels, small), True
    keep = np.setdiff1d(np.arange(1, n + 1), small)
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True


@dataclass
class _Candidates:
    """Masks kept so far, each stored cropped to its box: boxes ``(N, 4)`` inclusive image coordinates."""

    pieces: list[np.ndarray] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.float32))
    crop_areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.float64))

    def extend(self, other: _Candidates) -> None:
        self.pieces.extend(other.pieces)
        self.boxes = np.concatenate([self.boxes, other.boxes])
        self.scores = np.concatenate([self.scores, other.scores])
        self.crop_areas = np.concatenate([self.crop_areas, other.crop_areas])

    def select(self, index: np.ndarray) -> _Candidates:
        pieces = [self.pieces[i] for i in index]
        return _Candidates(pieces, self.boxes[index], self.scores[index], self.crop_areas[index])

    def mask_nms(self, iou_threshold: float) -> np.ndarray:
        """Greedy NMS by mask IoU: indices ``(K,)`` of the kept masks, best score first; a mask is dropped
        when its IoU with a kept, higher-scoring mask exceeds ``iou_threshold``."""
        boxes = self.boxes.astype(np.int64)
        keep: list[int] = []
        for i in np.argsort(-self.scores, kind="stable"):
            kept = np.asarray(keep, dtype=np.int64)
            kb, b = boxes[kept], boxes[i]  # only kept masks whose boxes meet this one can overlap it
            meets = (np.minimum(kb[:, 2], b[2]) >= np.maximum(kb[:, 0], b[0])) & (
                np.minimum(kb[:, 3], b[3]) >= np.maximum(kb[:, 1], b[1])
            )
            if not any(self._mask_iou(int(i), int(j)) > iou_threshold for j in kept[meets]):
                keep.append(int(i))
        return np.asarray(keep, dtype=np.int64)

    def _mask_iou(self, i: int, j: int) -> float:
        """IoU of pieces ``i`` and ``j``, placed in the union of their boxes."""
        (ax, ay), (bx, by) = self.boxes[i, :2].astype(np.int64), self.boxes[j, :2].astype(np.int64)
        a, b = self.pieces[i], self.pieces[j]
        x0, y0 = min(ax, bx), min(ay, by)
        x1, y1 = max(ax + a.shape[1], bx + b.shape[1]), max(ay + a.shape[0], by + b.shape[0])
        canvas = np.zeros((2, y1 - y0, x1 - x0), dtype=bool)
        canvas[0, ay - y0 : ay - y0 + a.shape[0], ax - x0 : ax - x0 + a.shape[1]] = a
        canvas[1, by - y0 : by - y0 + b.shape[0], bx - x0 : bx - x0 + b.shape[1]] = b
        union = np.count_nonzero(canvas[0] | canvas[1])
        return float(np.count_nonzero(canvas[0] & canvas[1]) / union) if union else 0.0

    def to_full_masks(self, image_size: tuple[int, int]) -> np.ndarray:
        """``(N, H, W)`` bool: each piece placed at its box."""
        masks = np.zeros((len(self.pieces), *image_size), dtype=bool)
        for mask, piece, (x1, y1, _, _) in zip(masks, self.pieces, self.boxes.astype(np.int64)):
            mask[y1 : y1 + piece.shape[0], x1 : x1 + piece.shape[1]] = piece
        return masks


def _process_crop(
    image: np.ndarray,
    crop_box: tuple[int, int, int, int],
    grid: np.ndarray,
    predictor: MaskPredictor,
    params: EverythingParams,
    bar: tqdm,
) -> _Candidates:
    """Candidates from one crop, after IoU, stability and crop-edge filtering (before NMS)."""
    x0, y0, x1, y1 = crop_box
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    crop_h, crop_w = crop.shape[:2]
    embedding = predictor.embed(crop)
    points = (grid * np.array([crop_w, crop_h])).astype(np.float32)
    chunk = max(1, UPSCALE_CHUNK_BYTES // (crop_h * crop_w * 4))
    height, width = image.shape[:2]
    offset = np.array([x0, y0, x0, y0], dtype=np.float32)
    out = _Candidates()
    for start in range(0, len(points), params.points_per_batch):
        batch = points[start : start + params.points_per_batch]
        coords = batch[:, None, :]
        labels = np.ones((len(batch), 1), dtype=np.float32)
        low_res, iou = predictor.decode(embedding, coords, labels, multimask=True)
        if low_res.ndim != 4 or low_res.shape[0] != len(batch) or iou.shape != low_res.shape[:2]:
            raise ValueError(
                f"predictor.decode returned logits {low_res.shape} and IoU {iou.shape}; expected "
                f"({len(batch)}, K, h, w) and ({len(batch)}, K)"
            )
        low_res = low_res.reshape(-1, *low_res.shape[2:])
        iou = iou.reshape(-1).astype(np.float32)
        survivors = np.arange(len(iou))
        if params.pred_iou_thresh > 0:  # cheap: no mask needed yet
            survivors = survivors[iou > params.pred_iou_thresh]
        for c in range(0, len(survivors), chunk):
            idx = survivors[c : c + chunk]
            logits = predictor.upscale(embedding, low_res[idx])
            if logits.shape != (len(idx), crop_h, crop_w):
                raise ValueError(f"predictor.upscale returned {logits.shape}, expected {(len(idx), crop_h, crop_w)}")
            stable = stability_score(logits, params.stability_score_offset)
            masks = logits > 0
            del logits
            keep = masks.any(axis=(1, 2))
            if params.stability_score_thresh > 0:
                keep &= stable >= params.stability_score_thresh
            masks, idx = masks[keep], idx[keep]
            boxes = _inclusive_boxes(masks) + offset
            inside = ~is_box_near_crop_edge(boxes, crop_box, (0, 0, width, height))
            local = (boxes[inside] - offset).astype(np.int64)
            pieces = [m[b[1] : b[3] + 1, b[0] : b[2] + 1].copy() for m, b in zip(masks[inside], local)]
            area = float((x1 - x0) * (y1 - y0))
            out.extend(_Candidates(pieces, boxes[inside], iou[idx[inside]], np.full(len(pieces), area)))
        bar.update(1)
    return out


def _clean_small_regions(
    masks: np.ndarray, min_area: int, nms_thresh: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill small holes and drop small islands of each ``(N, H, W)`` mask, then NMS preferring unchanged
    masks. Returns the new masks, their boxes and the kept indices (best first)."""
    cleaned = np.empty_like(masks)
    unchanged = np.empty(len(masks), dtype=np.float64)
    for i, mask in enumerate(masks):
        mask, holes_changed = remove_small_regions(mask, min_area, "holes")
        mask, islands_changed = remove_small_regions(mask, min_area, "islands")
        cleaned[i] = mask
        unchanged[i] = float(not (holes_changed or islands_changed))
    boxes = _inclusive_boxes(cleaned)
    return cleaned, boxes, nms(boxes, unchanged, nms_thresh)
