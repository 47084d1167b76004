"""Link per-frame instances into tracks: who is who from one frame to the next.

:func:`pool_features` averages the image embedding inside each mask (one appearance vector per object,
as OMG-Seg matches query embeddings between frames). :func:`link` joins the objects of consecutive
frames on a cost ``1 - ((1 - w) * IoU + w * cosine similarity)`` (``w = feature_weight``, 0 without
features); pairs whose mask IoU is below ``min_iou`` never link. Two methods:

``"hungarian"`` frame by frame, an optimal assignment (:func:`scipy.optimize.linear_sum_assignment`)
                between the live tracks and the new frame's objects. A track's last mask is moved by
                its smoothed velocity (centroid motion) before the IoU is taken (what moves out of the
                frame still counts in the union), and a track that finds no object stays live for
                ``max_gap`` frames (gap closing) before it ends. Objects left over start new tracks;
                ids are never reused.
``"laptrack"``  the ``laptrack`` package (Jaqaman et al.'s linear assignment tracker): frame-to-frame
                links, then gap closing over up to ``max_gap`` missing frames and splitting, on the
                same cost (no motion model). A division (an object whose next-frame part lies at least
                ``min_split`` inside it splits off) ends the parent's track and starts two, recorded in
                ``Tracks.lineage``. Needs the ``cells`` extra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

from ..instances import Instances
from ..tracks import Tracks
from .cache import Embedding
from .pooling import mask_cover, normalise

METHODS = ("hungarian", "laptrack")
GAP_COST = 0.05  # added per missed frame, so that a recently seen track wins a tie
VELOCITY_SMOOTHING = 0.5  # weight of the newest centroid step in a track's velocity
_NEVER = 1e6  # the cost of a pair that may not link


def pool_features(embedding: Embedding, masks: np.ndarray, *, centre: bool = True) -> np.ndarray:
    """``(N, C)`` float32 appearance vectors: the mean of ``embedding.features`` ``(1, C, h, w)`` inside
    each of the ``(N, H, W)`` bool masks (``(H, W)`` = ``embedding.original_size``) minus the mean over
    the whole image (``centre=False``: not subtracted), L2-normalised; an empty mask gives zeros.

    The feature grid covers the padded ``S x S`` model input (``S`` = the longest side of
    ``embedding.input_size``) whose top-left ``input_size`` part is the resized image; each feature
    cell is weighted by the area of the mask inside it. (Subtracting the image's mean spreads the
    cosine similarities of objects, which all share much of the embedding.)
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != embedding.original_size:
        raise ValueError(f"masks must be (N, H, W) with (H, W) = {embedding.original_size}, got {masks.shape}")
    _, c, h, w = embedding.features.shape
    side = max(embedding.input_size)
    cover, image = mask_cover(masks, embedding.input_size, (side / h, side / w), (h, w))
    grid = embedding.features[0].reshape(c, h * w).astype(np.float32)
    background = grid @ (image / image.sum())
    area = cover.sum(axis=1, keepdims=True)
    mean = cover @ grid.T / np.maximum(area, 1e-12)
    centred = mean - background if centre else mean
    # no object (empty mask) or nothing but the image's mean (rounding error) -> zeros
    alike = np.linalg.norm(centred, axis=1) <= 1e-5 * np.linalg.norm(mean, axis=1)
    out = np.where((area > 0) & ~alike[:, None], centred, 0)
    return normalise(out)


def link(
    frames: Sequence[Instances],
    features: Sequence[np.ndarray] | None = None,
    *,
    method: str = "hungarian",
    min_iou: float = 0.3,
    feature_weight: float = 0.3,
    max_gap: int = 2,
    min_split: float = 0.5,
) -> Tracks:
    """Tracks of the objects in ``frames`` (one ``Instances`` per frame, in time order; any ``ids``
    they carry are ignored): the same instances, in the same order, with ``ids`` 1, 2, ... in order
    of first appearance.

    features: per frame an ``(N_t, C)`` array (e.g. :func:`pool_features`), or None for IoU alone.
    min_iou: the least mask IoU of a link. feature_weight: the weight of cosine similarity in the
    cost. max_gap: how many frames in a row an object may be missing and keep its id.
    min_split: (laptrack) the least fraction of a daughter inside its mother's last mask.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_gap < 0 or not 0 <= min_iou <= 1 or not 0 <= feature_weight <= 1:
        raise ValueError(f"need max_gap >= 0 and min_iou, feature_weight in [0, 1]; got {max_gap}, "
                         f"{min_iou}, {feature_weight}")
    objects = _objects(frames, features)
    weight = feature_weight if features is not None else 0.0
    if method == "laptrack":
        ids, lineage = _link_laptrack(objects, min_iou, weight, max_gap, min_split)
    else:
        ids, lineage = _link_hungarian(objects, min_iou, weight, max_gap), {}
    return Tracks([dataclasses.replace(f, ids=i) for f, i in zip(frames, ids)], lineage)


@dataclass
class _Frame:
    """The objects of one frame: ``masks`` as a sparse ``(N, H * W)`` bool matrix, their pixels'
    ``rows`` / ``cols`` and owner ``index``, ``area``, ``centre`` ``(N, 2)`` y, x and ``features``."""

    size: tuple[int, int]
    masks: sparse.csr_matrix
    rows: np.ndarray
    cols: np.ndarray
    index: np.ndarray
    area: np.ndarray
    centre: np.ndarray
    features: np.ndarray | None

    def __len__(self) -> int:
        return self.masks.shape[0]


def _objects(frames: Sequence[Instances], features: Sequence[np.ndarray] | None) -> list[_Frame]:
    sizes = {f.image_size for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"all frames must have one (H, W); got {sorted(sizes)}")
    if features is not None and len(features) != len(frames):
        raise ValueError(f"features has {len(features)} entries for {len(frames)} frames")
    out = []
    for t, frame in enumerate(frames):
        h, w = frame.image_size
        index, rows, cols = np.nonzero(frame.masks)
        area = np.bincount(index, minlength=len(frame)).astype(np.float64)
        centre = np.zeros((len(frame), 2))
        for k, coord in enumerate((rows, cols)):
            centre[:, k] = np.bincount(index, coord, minlength=len(frame)) / np.maximum(area, 1)
        masks = sparse.csr_matrix((np.ones(len(index), np.float32), (index, rows * w + cols)), (len(frame), h * w))
        vectors = None
        if features is not None:
            vectors = np.asarray(features[t], np.float32)
            if vectors.ndim != 2 or len(vectors) != len(frame):
                raise ValueError(f"frame {t}: features must be ({len(frame)}, C), got {vectors.shape}")
            vectors = normalise(vectors)
        out.append(_Frame((h, w), masks, rows, cols, index, area, centre, vectors))
    return out


def _similarity(iou: np.ndarray, a: np.ndarray | None, b: np.ndarray | None, weight: float, min_iou: float) -> np.ndarray:
    """Link costs from an IoU matrix and the two sides' unit features: ``1 - similarity``, or
    :data:`_NEVER` where the IoU is below ``min_iou`` or nothing is alike."""
    similar = (1 - weight) * iou
    if weight and a is not None and b is not None:
        similar = similar + weight * np.clip(a @ b.T, 0, 1)
    return np.where((iou >= min_iou) & (similar > 0), 1 - similar, _NEVER)


# ---------------------------------------------------------------------------------------- hungarian


@dataclass
class _Track:
    id: int
    frame: int  # where it was last seen
    rows: np.ndarray
    cols: np.ndarray
    centre: np.ndarray
    feature: np.ndarray | None
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))


def _link_hungarian(objects: list[_Frame], min_iou: float, weight: float, max_gap: int) -> list[np.ndarray]:
    live: list[_Track] = []
    ids_per_frame, next_id = [], 1
    for t, frame in enumerate(objects):
        live = [k for k in live if t - k.frame <= max_gap + 1]
        ids = np.zeros(len(frame), np.int64)
        if live and len(frame):
            cost = _track_costs(live, frame, t, min_iou, weight)
            for r, c in zip(*linear_sum_assignment(cost)):
                if cost[r, c] < _NEVER:
                    _follow(live[r], frame, c, t)
                    ids[c] = live[r].id
        for c in np.flatnonzero(ids == 0):
            ids[c] = next_id
            pixels = frame.index == c
            live.append(_Track(next_id, t, frame.rows[pixels], frame.cols[pixels], frame.centre[c].copy(),
                               None if frame.features is None else frame.features[c]))
            next_id += 1
        ids_per_frame.append(ids)
    return ids_per_frame


def _track_costs(live: list[_Track], frame: _Frame, t: int, min_iou: float, weight: float) -> np.ndarray:
    """(tracks, objects) costs: each track's last mask moved by its velocity to frame t against the
    frame's objects, plus :data:`GAP_COST` per frame it has been missing. The part moved out of the
    frame counts in the union, so a track predicted to have left matches nothing well."""
    h, w = frame.size
    parts, owners = [], []
    for k, track in enumerate(live):
        dy, dx = np.rint(track.velocity * (t - track.frame)).astype(int)
        r, c = track.rows + dy, track.cols + dx
        keep = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        parts.append(r[keep] * w + c[keep])
        owners.append(np.full(int(keep.sum()), k))
    flat, owner = np.concatenate(parts), np.concatenate(owners)
    moved = sparse.csr_matrix((np.ones(len(flat), np.float32), (owner, flat)), (len(live), h * w))
    inter = (moved @ frame.masks.T).toarray()
    area = np.array([len(k.rows) for k in live])[:, None]
    iou = inter / np.maximum(area + frame.area[None] - inter, 1)
    features = None if frame.features is None else np.stack([k.feature for k in live])
    gaps = np.array([t - k.frame - 1 for k in live])[:, None]
    cost = _similarity(iou, features, frame.features, weight, min_iou)
    return np.where(cost < _NEVER, cost + GAP_COST * gaps, _NEVER)


def _follow(track: _Track, frame: _Frame, c: int, t: int) -> None:
    """Move ``track`` onto object ``c`` of frame t and update its smoothed velocity."""
    step = (frame.centre[c] - track.centre) / (t - track.frame)
    track.velocity = step if not track.velocity.any() else (
        VELOCITY_SMOOTHING * step + (1 - VELOCITY_SMOOTHING) * track.velocity)
    pixels = frame.index == c
    track.frame, track.rows, track.cols, track.centre = t, frame.rows[pixels], frame.cols[pixels], frame.centre[c].copy()
    if frame.features is not None:
        track.feature = frame.features[c]


# ---------------------------------------------------------------------------------------- laptrack


def _link_laptrack(objects: list[_Frame], min_iou: float, weight: float, max_gap: int,
                   min_split: float) -> tuple[list[np.ndarray], dict[int, list[int]]]:
    try:
        import networkx as nx
        from laptrack import LapTrack
    except ImportError:
        raise ImportError("method='laptrack' needs the laptrack package: pip install 'unisam[cells]'") from None
    ids = [np.zeros(len(f), np.int64) for f in objects]
    if not any(len(f) for f in objects):
        return ids, {}

    @lru_cache(maxsize=4 * (max_gap + 2))
    def pair(t1: int, t2: int) -> tuple[np.ndarray, np.ndarray]:
        """Link costs and the fraction of each frame-t2 object inside each frame-t1 object."""
        a, b = objects[t1], objects[t2]
        inter = (a.masks @ b.masks.T).toarray()
        iou = inter / np.maximum(a.area[:, None] + b.area[None] - inter, 1)
        return _similarity(iou, a.features, b.features, weight, min_iou), inter / np.maximum(b.area[None], 1)

    def cost(u: np.ndarray, v: np.ndarray) -> float:
        (t1, i), (t2, j) = sorted([(int(u[0]), int(u[1])), (int(v[0]), int(v[1]))])
        return float(pair(t1, t2)[0][i, j])

    def split_cost(u: np.ndarray, v: np.ndarray) -> float:
        (t1, i), (t2, j) = sorted([(int(u[0]), int(u[1])), (int(v[0]), int(v[1]))])
        inside = pair(t1, t2)[1][i, j]
        return 1 - inside if inside >= min_split else _NEVER

    # laptrack takes a link (cost c) over ending one track and starting another when c plus the
    # matrix's least entry is below the end + start costs: costs of 1 (the cutoff) take every allowed one.
    alternatives = dict(track_start_cost=1.0, track_end_cost=1.0, segment_start_cost=1.0, segment_end_cost=1.0,
                        no_splitting_cost=1.0)
    tracker = LapTrack(metric=cost, cutoff=1.0, gap_closing_metric=cost, gap_closing_cutoff=1.0,
                       gap_closing_max_frame_count=max_gap + 1, splitting_metric=split_cost,
                       splitting_cutoff=1 - min_split + 1e-9, merging_cutoff=False, **alternatives)
    coords = [np.stack([np.full(len(f), t), np.arange(len(f))], 1).astype(np.float64) for t, f in enumerate(objects)]
    tree = tracker.predict(coords)  # nodes (frame, index), edges forward in time
    splits = [node for node in tree if tree.out_degree(node) > 1]
    pieces = tree.to_undirected()
    pieces.remove_edges_from([(node, child) for node in splits for child in tree.successors(node)])
    first = sorted((min(piece), sorted(piece)) for piece in nx.connected_components(pieces))
    track = {}  # node -> our id, in order of first appearance
    for k, (_, nodes) in enumerate(first, 1):
        for t, i in nodes:
            ids[t][i] = track[t, i] = k
    lineage = {track[node]: [track[child] for child in tree.successors(node)] for node in splits}
    return ids, {p: sorted(c) for p, c in lineage.items()}
