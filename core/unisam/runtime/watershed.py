"""Segment-everything's watershed mode: instances from the model's instance head, not from a point grid.

micro-sam's automatic instance segmentation, on this project's models: the instance head
(:mod:`unisam.models.instance_head`) turns the image embedding into a foreground map and a map of the
distance to each object's edge (1 at its innermost pixel). Seeds are the connected regions where that
distance is above ``watershed_seed_thresh`` inside the foreground; a seeded watershed on the
inverted distance, cut to the foreground, grows each seed into its object. Touching nuclei stay apart
where the distance dips between them. No decoder runs: one encoder pass per crop is the whole cost.

Crops are the whole image, or with ``object_size`` those of :func:`~unisam.runtime.everything.object_crops`
(about ten objects a side, overlapping by two object sizes). An object is kept from the crop whose
centre is nearest to its centroid, so each object comes from exactly one crop and lies at least about
one object size from that crop's edges.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ..instances import Instances
from ..masks import masks_to_boxes
from .cache import Embedding

FOREGROUND_THRESH = 0.5  # foreground probability above which a pixel belongs to some object
MIN_AREA = 16  # pixels: smaller pieces are dropped (without object_size)
MIN_AREA_FRACTION = 0.1  # with object_size: pieces smaller than this * object_size**2 are dropped


class InstanceMapPredictor(Protocol):
    """What the watershed mode needs from a model (a :class:`~unisam.runtime.predictor.Predictor`
    whose export has an instance head)."""

    def embed(self, image: np.ndarray) -> Embedding: ...

    def instance_maps(self, embedding: Embedding) -> np.ndarray:
        """``(2, H, W)`` float32 foreground probability and distance to the edge, at the image's size."""
        ...


def watershed_instances(
    image: np.ndarray,
    predictor: InstanceMapPredictor,
    crops: list[tuple[int, int, int, int]],
    seed_thresh: float,
    min_area: int,
    progress: bool = False,
) -> Instances:
    """Instances of the ``(H, W, 3)`` uint8 ``image`` from the instance head, one watershed per crop
    ``(x0, y0, x1, y1)`` (x1, y1 exclusive), sorted by score (the mean foreground probability inside
    the mask). ``seed_thresh``: distance (0-1) above which a foreground pixel seeds an object;
    ``min_area``: smaller objects (pixels) are dropped."""
    height, width = image.shape[:2]
    centres = np.array([((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in crops])
    pieces: list[tuple[slice, slice, np.ndarray]] = []
    scores: list[float] = []
    for index, (x0, y0, x1, y1) in enumerate(tqdm(crops, desc="segment everything (watershed)", unit="crop",
                                                  disable=not progress)):
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        foreground, distance = predictor.instance_maps(predictor.embed(crop))
        labels, n = _seeded_watershed(foreground > FOREGROUND_THRESH, distance, seed_thresh)
        for k, window in enumerate(ndimage.find_objects(labels, n), 1):
            if window is None:
                continue
            piece = labels[window] == k
            area = int(piece.sum())
            if area < max(min_area, 1):
                continue
            cy, cx = ndimage.center_of_mass(piece)
            cx, cy = cx + window[1].start + x0 + 0.5, cy + window[0].start + y0 + 0.5
            if len(crops) > 1 and np.argmin(((centres - (cx, cy)) ** 2).sum(1)) != index:
                continue  # a nearer crop owns this object
            rows = slice(y0 + window[0].start, y0 + window[0].stop)
            cols = slice(x0 + window[1].start, x0 + window[1].stop)
            pieces.append((rows, cols, piece))  # kept at its window's size until the end
            scores.append(float(foreground[window][piece].mean()))
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    masks = np.zeros((len(order), height, width), bool)
    for mask, i in zip(masks, order):
        rows, cols, piece = pieces[i]
        mask[rows, cols] = piece
    return Instances(masks=masks, boxes=masks_to_boxes(masks).reshape(-1, 4).astype(np.float32),
                     scores=np.asarray(scores, np.float32).reshape(-1)[order])


def _seeded_watershed(foreground: np.ndarray, distance: np.ndarray, seed_thresh: float) -> tuple[np.ndarray, int]:
    """``(H, W)`` int32 object labels 1..n (0 = background) and n: seeds are the 8-connected regions
    of ``foreground & (distance > seed_thresh)``, grown over the inverted distance inside the
    foreground only (scikit-image's watershed with a mask), so a foreground piece without a seed of
    its own (e.g. the sliver of an object cut by a crop's edge) stays background."""
    from skimage.segmentation import watershed

    seeds, n = ndimage.label(foreground & (distance > seed_thresh), structure=np.ones((3, 3), bool))
    if n == 0:
        return seeds.astype(np.int32), 0
    labels = watershed(-distance, markers=seeds, mask=foreground, connectivity=2)
    return labels.astype(np.int32), n
