"""Prompted tracking: many objects followed from keyframes through a sequence, frame by frame.

Each object's mask on one frame, shifted by its smoothed motion, prompts the next frame on that
frame's cached embedding: the box of the shifted mask, positive points deep inside it
(:func:`unisam.prompts.mask_to_prompt`) and, when the decoder takes one, the previous low-res logits
(shifted too) as mask input. All objects of a frame go through the decoder in one batched call. A
prediction is a *miss* when its predicted IoU, its overlap with the expected (shifted) mask, its area
or its area change breaks the :class:`StopRules`; after more than ``patience`` misses in a row (an
occlusion that lasts too long, an object that left the frame) the track ends. Pixels claimed by two
objects go to the better-scoring one (objects given on a keyframe always win).

Keyframes hold the objects given by the user (prompts or masks with ids). One forward sweep starts
at the first keyframe: at each keyframe its objects start or restart (a correction re-prompts its
object from there on). A backward sweep then starts at the last keyframe and fills only the frames
the forward sweep did not reach for an object: backwards from its first keyframe, and the gaps
before its later keyframes. Each frame is embedded once (the predictor caches embeddings), and only
frames some object reaches are embedded at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..instances import Instances
from ..prompts import Prompt, mask_to_prompt
from .cache import Embedding
from .linking import pool_features
from .predictor import Predictor

KeyObjects = Instances | Mapping[int, Prompt]  # the objects of one keyframe, by id


@dataclass(frozen=True)
class StopRules:
    """When an object is missed on a frame, and when a missed object's track ends.

    A miss: predicted IoU below ``score_threshold``, mask IoU with the expected mask (the previous
    one, moved by the motion estimate) below ``min_overlap``, fewer than ``min_area`` pixels, an
    area more than ``max_area_change`` times larger or smaller than the previous one, or a mask at
    the frame's edge with less than ``edge_fraction`` of the largest area its track had (what is
    left of an object leaving the frame), or (unless None) a cosine similarity below
    ``min_similarity`` between the image-embedding features pooled inside the mask
    (:func:`~unisam.runtime.linking.pool_features`) and the object's on its keyframe (background
    where the object has gone). A track ends after more than ``patience`` misses in a row.

    Prompts: ``n_points`` positive points per object (besides the box); ``use_mask_input``: also
    pass the previous low-res logits (when the decoder takes them); ``multimask``: decode three
    candidate masks and keep the one that overlaps the expected mask most; ``motion``: weight of the
    newest displacement in the smoothed velocity (pixels per frame) that moves each mask before it
    prompts the next frame, 0 = no motion model. The defaults are :func:`unisam.propagate`'s (stop at
    the first miss); :class:`TrackRules` holds :func:`unisam.track`'s.
    """

    score_threshold: float = 0.75
    min_overlap: float = 0.3
    min_area: int = 1
    n_points: int = 1
    use_mask_input: bool = False
    patience: int = 0
    max_area_change: float = math.inf
    motion: float = 0.0
    multimask: bool = False
    edge_fraction: float = 0.0
    min_similarity: float | None = None

    def __post_init__(self) -> None:
        if self.patience < 0 or self.n_points < 0:
            raise ValueError(f"patience and n_points must be >= 0; got {self.patience}, {self.n_points}")
        if self.max_area_change < 1:
            raise ValueError(f"max_area_change is a factor >= 1; got {self.max_area_change}")
        if not 0 <= self.motion <= 1:
            raise ValueError(f"motion is a weight in [0, 1]; got {self.motion}")

    @classmethod
    def from_options(cls, **options: Any) -> StopRules:
        """Rules from keyword options; an unknown name raises a ``ValueError`` listing the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown propagation options {unknown}; known: {known}")
        return cls(**options)


@dataclass(frozen=True)
class TrackRules(StopRules):
    """:class:`StopRules` with the defaults of :func:`unisam.track`, for objects that move, touch and
    hide for a few frames; chosen on the scenes of :mod:`unisam.data.synthetic.tracking` with the
    bundled model (mask input and more points made its masks worse there, so they stay off)."""

    score_threshold: float = 0.5  # the bundled model's predicted IoU of good masks: about 0.6-0.8
    patience: int = 2  # occlusions of up to two frames
    max_area_change: float = 2.0
    motion: float = 0.25  # masks are noisy: a strong motion model runs away with them
    # three candidates, the one nearest the expected mask: better masks, less drift
    multimask: bool = True
    edge_fraction: float = 0.5
    min_similarity: float | None = 0.5  # a box on empty background still gets a mask and IoU ~0.6


@dataclass
class _Track:
    """One object being followed along a sweep. velocity: (dy, dx) pixels per frame along it."""

    id: int
    label: str | None
    mask: np.ndarray
    logits: np.ndarray | None
    appearance: np.ndarray | None  # (C,) pooled embedding features on its keyframe
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    missed: int = 0
    peak: int = 0  # the largest area so far, pixels

    def __post_init__(self) -> None:
        self.peak = max(self.peak, np.count_nonzero(self.mask))

    @property
    def offset(self) -> np.ndarray:
        """(dy, dx) from the last accepted mask to where the object is expected on the next frame."""
        return self.velocity * (self.missed + 1)


@dataclass
class _Found:
    """An object's mask on one frame; ``keyframe``: given by the user there (it wins every pixel)."""

    track: _Track
    mask: np.ndarray
    score: float
    logits: np.ndarray | None
    keyframe: bool = False


def track_objects(
    frames: Sequence,
    keyframes: Mapping[int, KeyObjects],
    predictor: Predictor,
    rules: StopRules = TrackRules(),
    on_frame: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, Instances]]:
    """Yield ``(frame index, Instances with ids)`` as the sweeps reach frames: the forward sweep's
    frames in order, then the backward sweep's (see the module docstring). A frame the backward
    sweep adds objects to comes twice, with different ids; :func:`merge` joins them.

    frames: images of one size (anything :func:`unisam.images.load_image` accepts), indexed lazily.
    keyframes: {frame index: Instances with ``ids`` (scores kept) or {id: Prompt} (segmented on that
    frame once, the best of three masks for a lone click)}. ``on_frame(index)`` is called after each
    frame a sweep visits (at most :func:`sweep_length` calls in all).
    """
    n = len(frames)
    if n == 0:
        raise ValueError("the sequence has no frames")
    outside = sorted(k for k in keyframes if not 0 <= k < n)
    if outside:
        raise ValueError(f"objects given on frames {outside}, outside the {n} frames (0..{n - 1})")
    if not keyframes:
        raise ValueError("no objects to track: give prompts or masks on at least one frame")
    labelled = any(_labels(objects) for objects in keyframes.values())
    given = {index: _Keyframe(objects) for index, objects in keyframes.items()}
    seen: dict[int, set[int]] = {}
    for direction in (1, -1):
        yield from _sweep(frames, given, predictor, rules, direction, seen, labelled, on_frame)


@dataclass
class _Keyframe:
    """The objects given on one keyframe, segmented (prompts) and described (appearance) once."""

    objects: KeyObjects
    items: list[tuple] | None = None  # (id, mask, score, logits, label, appearance)

    def found(self, active: dict[int, _Track], embedding, predictor: Predictor, rules: StopRules) -> list[_Found]:
        """The objects as found masks with new tracks; an object already active keeps its motion."""
        if self.items is None:
            self.items = self._resolve(embedding, predictor, rules)
        found = []
        for object_id, mask, score, logits, label, appearance in self.items:
            old = active.get(object_id)
            track = _Track(object_id, label if label is not None or old is None else old.label, mask, logits,
                           appearance, np.zeros(2) if old is None else old.velocity)
            found.append(_Found(track, mask, score, logits, keyframe=True))
        return found

    def _resolve(self, embedding, predictor: Predictor, rules: StopRules) -> list[tuple]:
        objects = self.objects
        if isinstance(objects, Instances):
            if objects.ids is None:
                raise ValueError("Instances given on a keyframe need ids (one per object)")
            ids, masks, scores = objects.ids.tolist(), list(objects.masks), objects.scores.tolist()
            logits, labels = [None] * len(objects), objects.labels or [None] * len(objects)
        else:
            ids, prompts = list(objects), list(objects.values())
            predictions = predictor.predict_prompts(embedding(), prompts, [p.is_single_point for p in prompts],
                                                    best_only=True)
            masks = [p.masks[0] for p in predictions]
            scores = [float(p.scores[0]) for p in predictions]
            logits, labels = [p.low_res_logits[0] for p in predictions], [p.label for p in prompts]
        looks = [None] * len(ids) if rules.min_similarity is None else pool_features(embedding(), np.stack(masks))
        return list(zip(ids, masks, scores, logits, labels, looks))


def sweep_length(n: int, keyframes: Sequence[int]) -> int:
    """How many frames the two sweeps over ``n`` frames visit at most: forwards from the first
    keyframe to the end, backwards from the last one to the start."""
    return n - min(keyframes) + max(keyframes) + 1


def _sweep(frames, keyframes: dict[int, _Keyframe], predictor, rules, direction, seen, labelled, on_frame):
    """One direction from the first keyframe along it: yields ``(index, Instances)``."""
    keys = sorted(keyframes, reverse=direction < 0)
    end = len(frames) if direction > 0 else -1
    active: dict[int, _Track] = {}
    cached: dict[int, Embedding] = {}

    def embedding(index: int) -> Embedding:
        if index not in cached:
            cached.clear()
            cached[index] = predictor.embed(frames[index])
        return cached[index]

    for index in range(keys[0], end, direction):
        if direction < 0:
            active = {i: t for i, t in active.items() if i not in seen.get(index, ())}
        if not active and index not in keyframes:
            if all((k - index) * direction < 0 for k in keys):
                break
            continue
        found = _predict(embedding(index), list(active.values()), predictor, rules) if active else []
        if index in keyframes:
            given = keyframes[index].found(active, lambda: embedding(index), predictor, rules)
            ids = {f.track.id for f in given}
            found = [f for f in found if f.track.id not in ids] + given
        kept = _accept(found, active, rules)
        if direction > 0:
            seen[index] = {f.track.id for f in kept}
        else:
            kept = [f for f in kept if f.track.id not in seen.get(index, ())]
        if on_frame is not None:
            on_frame(index)
        if kept:
            yield index, _instances(kept, labelled)


def _predict(embedding: Embedding, tracks: list[_Track], predictor: Predictor, rules: StopRules) -> list[_Found]:
    """Decode every active object on the frame of ``embedding`` in one batched call; the masks that
    pass the score and overlap rules (the others are misses, left out)."""
    size = tracks[0].mask.shape
    if embedding.original_size != size:
        raise ValueError(
            f"a frame has size {embedding.original_size}, the objects' masks {size}; all frames must have one (H, W)"
        )
    expected = [_shift(t.mask, t.offset, False) for t in tracks]
    live = [i for i, m in enumerate(expected) if m.any()]  # the others moved out of the frame
    if not live:
        return []
    with_logits = rules.use_mask_input and predictor.accepts_mask_input and all(tracks[i].logits is not None for i in live)
    scale = embedding.input_size[0] / embedding.original_size[0] / 4  # frame pixels -> low-res pixels
    prompts = [
        _prompt(expected[i], rules.n_points,
                _shift(tracks[i].logits, tracks[i].offset * scale, -20.0) if with_logits else None)
        for i in live
    ]
    decoded = predictor.decode_prompts(embedding, prompts, multimask=rules.multimask)
    found = []
    for i, (logits, scores) in zip(live, decoded):
        # each candidate at full resolution inside its window only; the one nearest the expected mask
        windows = predictor.upscale_windows(embedding, logits)
        area = np.count_nonzero(expected[i])
        shared = [w.overlap(expected[i]) for w in windows]
        overlaps = [n / max(area + w.area - n, 1) for n, w in zip(shared, windows)]
        k = int(np.argmax(overlaps))
        score = float(scores[k])
        if score >= rules.score_threshold and overlaps[k] >= rules.min_overlap:
            found.append(_Found(tracks[i], windows[k].paste(size), score, logits[k]))
    if rules.min_similarity is not None and found:
        looks = pool_features(embedding, np.stack([f.mask for f in found]))
        found = [f for f, look in zip(found, looks) if float(look @ f.track.appearance) >= rules.min_similarity]
    return found


def _accept(found: list[_Found], active: dict[int, _Track], rules: StopRules) -> list[_Found]:
    """Make the masks of one frame disjoint, apply the area rules, update (or end) the tracks; the
    objects found on the frame."""
    masks = disjoint(np.stack([f.mask for f in found]), [(f.keyframe, f.score) for f in found]) if found else []
    kept = []
    for f, mask in zip(found, masks):
        f.mask = mask
        if f.keyframe:
            f.track.mask = mask
            active[f.track.id] = f.track
            kept.append(f)
            continue
        track = f.track
        if _area_ok(mask, track, rules):
            moved = (_centroid(mask) - _centroid(track.mask)) / (track.missed + 1)
            track.velocity = (1 - rules.motion) * track.velocity + rules.motion * moved
            track.mask, track.logits, track.missed = mask, f.logits, 0
            track.peak = max(track.peak, np.count_nonzero(mask))
            kept.append(f)
    ids = {f.track.id for f in kept}
    for track in list(active.values()):
        if track.id not in ids:
            track.missed += 1
            if track.missed > rules.patience:
                del active[track.id]
    return kept


def _area_ok(mask: np.ndarray, track: _Track, rules: StopRules) -> bool:
    """The area rules: at least ``min_area`` pixels, within ``max_area_change`` of the last mask, and
    not a remnant at the frame's edge (an object leaving the frame)."""
    area, before = np.count_nonzero(mask), np.count_nonzero(track.mask)
    if area < max(rules.min_area, 1) or max(area, before) > rules.max_area_change * min(area, before):
        return False
    at_edge = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
    return not (at_edge and area < rules.edge_fraction * track.peak)


def _instances(found: list[_Found], labelled: bool) -> Instances:
    found = sorted(found, key=lambda f: f.track.id)
    return Instances.from_masks(
        np.stack([f.mask for f in found]),
        np.array([f.score for f in found], np.float32),
        ids=np.array([f.track.id for f in found], np.int64),
        labels=[f.track.label for f in found] if labelled else None,
    )


def merge(steps: Iterator[tuple[int, Instances]], n: int, size: tuple[int, int]) -> list[Instances]:
    """One Instances per frame (``n`` frames of ``size`` (H, W)) from :func:`track_objects`' steps:
    the parts of a frame joined, sorted by id, overlaps given to the higher score."""
    parts: list[list[Instances]] = [[] for _ in range(n)]
    for index, instances in steps:
        parts[index].append(instances)
    out = []
    for frame in parts:
        if not frame:
            out.append(Instances.empty(*size))
            continue
        joined = Instances.concat(frame)
        joined = joined[np.argsort(joined.ids, kind="stable")]
        if len(frame) > 1:
            joined.masks = disjoint(joined.masks, joined.scores.tolist())
            joined = Instances.from_masks(joined.masks, joined.scores, ids=joined.ids, labels=joined.labels)
        out.append(joined)
    return out


def disjoint(masks: np.ndarray, priority: Sequence) -> np.ndarray:
    """``(N, H, W)`` bool masks made disjoint: a pixel claimed by several goes to the one with the
    highest ``priority`` (N sortable keys; the first on ties)."""
    if len(masks) < 2:
        return masks
    rows, cols = np.nonzero(masks.sum(axis=0, dtype=np.uint8 if len(masks) < 256 else np.int32) > 1)
    if not len(rows):
        return masks
    order = sorted(range(len(masks)), key=lambda i: priority[i], reverse=True)
    claims = masks[order][:, rows, cols]
    winner = np.asarray(order)[np.argmax(claims, axis=0)]
    out = masks.copy()
    out[:, rows, cols] = False
    out[winner, rows, cols] = True
    return out


def exclusive(found: Instances, min_free: float = 0.5) -> Instances:
    """One object per pixel, for linking the instances of automatic segmentation: in order of score,
    an instance is kept when at least ``min_free`` of its pixels are not in a better one already
    kept (a part or a duplicate of an object is dropped); the kept masks are made disjoint."""
    taken = np.zeros(found.image_size, bool)
    keep = []
    for i in np.argsort(-found.scores, kind="stable"):
        area = np.count_nonzero(found.masks[i])
        if area and np.count_nonzero(found.masks[i] & ~taken) >= min_free * area:
            keep.append(i)
            taken |= found.masks[i]
    kept = found[np.sort(np.asarray(keep, np.int64))]
    return Instances.from_masks(disjoint(kept.masks, kept.scores.tolist()), kept.scores, labels=kept.labels)


def _prompt(mask: np.ndarray, n_points: int, logits: np.ndarray | None) -> Prompt:
    """:func:`mask_to_prompt` computed on the mask's bounding crop (the same prompt, faster), with the
    points padded to ``n_points`` by repeating the last one so that every object's prompt has one
    shape (one decoder call)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, x0 = max(rows[0] - 1, 0), max(cols[0] - 1, 0)
    crop = mask[y0 : rows[-1] + 2, x0 : cols[-1] + 2]
    prompt = mask_to_prompt(crop, n_points, logits)
    box = prompt.box + np.array([x0, y0, x0, y0])
    if prompt.points is None:
        return Prompt(box=box, mask=logits)
    points = prompt.points + np.array([x0, y0])
    points = np.concatenate([points, np.repeat(points[-1:], n_points - len(points), axis=0)])
    return Prompt(points=points, point_labels=np.ones(len(points)), box=box, mask=logits)


def _shift(image: np.ndarray | None, offset: np.ndarray, fill: Any) -> np.ndarray | None:
    """``image`` (H, W) moved by ``offset`` (dy, dx), rounded to whole pixels; uncovered pixels get ``fill``."""
    if image is None:
        return None
    dy, dx = (int(round(v)) for v in offset)
    if dy == 0 and dx == 0:
        return image
    out = np.full_like(image, fill)
    h, w = image.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src = image[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    out[max(dy, 0) : max(dy, 0) + src.shape[0], max(dx, 0) : max(dx, 0) + src.shape[1]] = src
    return out


def _centroid(mask: np.ndarray) -> np.ndarray:
    """(row, col) centre of a non-empty mask, in pixels (found in its bounding crop: faster)."""
    (y0, y1), (x0, x1) = (np.flatnonzero(mask.any(axis=a))[[0, -1]] for a in (1, 0))
    rows, cols = np.nonzero(mask[y0 : y1 + 1, x0 : x1 + 1])
    return np.array([rows.mean() + y0, cols.mean() + x0])


def _labels(objects: KeyObjects) -> bool:
    if isinstance(objects, Instances):
        return objects.labels is not None and any(label is not None for label in objects.labels)
    return any(p.label is not None for p in objects.values())
