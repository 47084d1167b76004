"""``unisam.track``: objects keep their identity across the frames of a video, a time-lapse or the
slices of a z-stack (slice = frame).

Two modes:

- **prompted** (``start`` given): the objects prompted or drawn on one or more keyframes are followed
  forwards and backwards by the prompted propagation engine (:mod:`unisam.runtime.track`; options
  :class:`~unisam.runtime.track.TrackRules`). A later keyframe that names an object again (a
  correction) re-prompts it from there on.
- **automatic** (``start=None``): objects are found on every frame (:func:`unisam.segment_everything`,
  or the user's own segmentation via ``instances=``) and linked between frames
  (:func:`unisam.runtime.linking.link`: Hungarian matching on mask IoU and image-embedding similarity,
  or ``method="laptrack"`` for cells, which also records divisions in ``Tracks.lineage``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
from tqdm import tqdm

from .api import everything_defaults
from .frames import Frames, open_frames
from .hub import ModelArg, get_model
from .instances import Instances
from .prompts import Prompt, make_prompt
from .runtime.everything import EverythingParams, segment_everything
from .runtime.linking import link, pool_features
from .runtime.track import KeyObjects, TrackRules, exclusive, merge, sweep_length, track_objects
from .tracks import Tracks

LINK_OPTIONS = ("method", "min_iou", "feature_weight", "max_gap", "min_split")

Start = Instances | Prompt | Sequence[Prompt | None] | Mapping[int, Prompt]


def track(
    frames: Any,
    start: Start | Mapping[int, Start] | None = None,
    *,
    start_frame: int = 0,
    model: ModelArg = None,
    instances: Sequence[Instances] | np.ndarray | None = None,
    progress: bool | Callable[[int, int], None] = False,
    **options: Any,
) -> Tracks:
    """One :class:`Instances` per frame with ``ids`` filled (the same id for the same object on every
    frame where it is present), as :class:`~unisam.tracks.Tracks` (a list, plus ``lineage``).

    frames: anything :func:`unisam.open_frames` reads: an array (T, H, W[, C]), a sequence of images,
    a directory of images, a multi-page TIFF or a video file (decoded lazily).

    start (prompted mode), on frame ``start_frame``: an :class:`Instances` (its ``ids``, else 1..N),
    a list of :class:`Prompt` (object ``i + 1`` is the i-th; ``None`` skips one), a dict {id: Prompt};
    or a dict {frame index: any of these} for several keyframes. Options: the fields of
    :class:`~unisam.runtime.track.TrackRules` by name (score_threshold 0.5, min_overlap 0.3,
    min_area 1, n_points 1, use_mask_input False, patience 2, max_area_change 2.0, motion 0.25,
    multimask True, edge_fraction 0.5).

    start=None (automatic mode): ``instances`` = the user's own segmentation (a sequence of T
    Instances or a (T, H, W) integer label stack; default: segment everything on each frame, with the
    :class:`~unisam.EverythingParams` fields as options, e.g. ``points_per_side=16``, keeping one
    object per pixel: parts and duplicates of a better mask are dropped). Linking options:
    ``method`` ("hungarian" or "laptrack"), ``min_iou`` 0.3, ``feature_weight`` 0.3 (embedding
    similarity; 0 links by overlap alone and, with ``instances``, runs no model), ``max_gap`` 2,
    ``min_split`` 0.5 (see :func:`unisam.runtime.linking.link`).

    progress: True for a tqdm bar, or a function called as ``progress(done, total)`` (frames of work;
    ``done == total`` once at the end), e.g. a host's own progress bar.
    """
    source = frames
    frames = open_frames(source)
    try:
        if start is None:
            with _Progress(progress) as report:
                return _automatic(frames, model, instances, options, report)
        if instances is not None:
            raise ValueError("instances= is the segmentation of automatic mode; give it with start=None")
        keyframes = _keyframes(start, start_frame, frames)
        rules = TrackRules(**_split(options, "prompted tracking", rules=[f.name for f in fields(TrackRules)])["rules"])
        with _Progress(progress, sweep_length(len(frames), list(keyframes))) as report:
            steps = track_objects(frames, keyframes, get_model(model), rules, on_frame=lambda _index: report.advance())
            return Tracks(merge(steps, len(frames), frames.size))
    finally:
        if frames is not source:
            frames.close()


def check_automatic_options(options: dict[str, Any], model: ModelArg = None) -> dict[str, dict[str, Any]]:
    """Automatic mode's ``options`` (segment-everything ones for ``model``, linking ones) checked
    before any frame is read, as ``{"everything": {...}, "link": {...}}``; a bad name or value is a
    ``ValueError``."""
    split = _split(options, "automatic tracking", link=LINK_OPTIONS, everything=EverythingParams.names())
    everything_defaults(model).replace(**split["everything"])
    link([], None, **split["link"])
    return split


def _automatic(frames: Frames, model: ModelArg, instances, options: dict[str, Any], report: _Progress) -> Tracks:
    n = len(frames)
    if instances is None:
        split = _split(options, "automatic tracking", link=LINK_OPTIONS, everything=EverythingParams.names())
    else:
        split = _split(options, "automatic tracking of given instances", link=LINK_OPTIONS)
    linking = split["link"]
    pooled = linking.get("feature_weight", 0.3) != 0
    report.start((instances is None) * n + pooled * n)
    if instances is None:
        predictor = get_model(model)
        params = everything_defaults(predictor).replace(**split["everything"])
        found = [report.advance(exclusive(segment_everything(frames[t], predictor, params))) for t in range(n)]
    else:
        found = _own_instances(instances, frames)
    if not pooled:
        return link(found, None, **linking)
    predictor = get_model(model)
    features = [report.advance(pool_features(predictor.embed(frames[t]), found[t].masks)) for t in range(n)]
    return link(found, features, **linking)


class _Progress:
    """``track``'s progress: a tqdm bar (``True``), a ``(done, total)`` callback, or nothing."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int = 0):
        if not (isinstance(progress, bool) or callable(progress)):
            raise ValueError(f"progress must be True, False or a function (done, total); got {progress!r}")
        self.callback = progress if callable(progress) else None
        self.bar = tqdm(desc="track", unit="frame", disable=progress is not True)
        self.done, self.total = 0, 0
        self.start(total)

    def start(self, total: int) -> None:
        self.total = self.bar.total = total
        self.bar.refresh()

    def advance(self, value: Any = None) -> Any:
        """One frame of work done; returns ``value`` (so it can wrap a step's result)."""
        self.done = min(self.done + 1, self.total)
        self.bar.update(1)
        if self.callback is not None:
            self.callback(self.done, self.total)
        return value

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, kind, *_rest) -> None:
        if kind is None and (self.done < self.total or not self.total):  # also sweeps that stopped early
            self.bar.update(self.total - self.done)
            self.done = self.total
            if self.callback is not None:
                self.callback(self.done, self.total)
        self.bar.close()


def _own_instances(instances, frames: Frames) -> list[Instances]:
    """The user's per-frame segmentation as T Instances of the frames' size."""
    if isinstance(instances, np.ndarray):
        instances = list(Tracks.from_label_stack(instances))
    instances = list(instances)
    if len(instances) != len(frames):
        raise ValueError(f"instances has {len(instances)} frames, the sequence {len(frames)}")
    for t, found in enumerate(instances):
        if not isinstance(found, Instances) or found.image_size != frames.size:
            got = found.image_size if isinstance(found, Instances) else type(found).__name__
            raise ValueError(f"instances[{t}] must be Instances of size {frames.size}; got {got}")
    return instances


def _split(options: dict[str, Any], mode: str, **groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``options`` sorted into ``groups`` of names; a name in none of them is a ``ValueError`` that
    lists what ``mode`` accepts."""
    out: dict[str, dict[str, Any]] = {group: {} for group in groups}
    for name, value in options.items():
        group = next((g for g, names in groups.items() if name in names), None)
        if group is None:
            known = sorted(n for names in groups.values() for n in names)
            raise ValueError(f"unknown option {name!r} for {mode}; known: {known}")
        out[group][name] = value
    return out


def _keyframes(start, start_frame: int, frames: Frames) -> dict[int, KeyObjects]:
    """``start`` as {frame index: Instances with ids | {id: validated Prompt}}."""
    n = len(frames)
    if isinstance(start, Mapping) and not _is_prompt_dict(start):
        if start_frame:
            raise ValueError("start is a dict {frame index: objects}: give the frames there, not start_frame")
        given = dict(start)
    else:
        given = {start_frame: start}
    if not given:
        raise ValueError("start is empty: give prompts or Instances on at least one frame")
    outside = sorted(k for k in given if not (isinstance(k, (int, np.integer)) and 0 <= k < n))
    if outside:
        raise ValueError(f"prompts on frame(s) {outside}, outside the {n} frames (indices 0..{n - 1})")
    return {int(k): _objects(objects, frames.size, int(k)) for k, objects in given.items()}


def _is_prompt_dict(start: Mapping) -> bool:
    return bool(start) and all(isinstance(v, Prompt) for v in start.values())


def _objects(objects, size: tuple[int, int], index: int) -> KeyObjects:
    """One keyframe's objects: Instances with ids, or {id: Prompt} validated against ``size``."""
    if isinstance(objects, Instances):
        if objects.image_size != size:
            raise ValueError(f"the Instances on frame {index} have size {objects.image_size}, the frames {size}")
        if not len(objects):
            raise ValueError(f"the Instances on frame {index} are empty")
        ids = np.arange(1, len(objects) + 1) if objects.ids is None else objects.ids
        if len(set(ids.tolist())) != len(ids) or ids.min() <= 0:
            raise ValueError(f"the Instances on frame {index} need distinct ids > 0; got {ids.tolist()}")
        return Instances(objects.masks, objects.boxes, objects.scores, objects.labels, objects.label_scores, ids)
    if isinstance(objects, Prompt):
        objects = [objects]
    if isinstance(objects, Mapping):
        items = dict(objects)
    elif isinstance(objects, Sequence) and not isinstance(objects, str):
        items = {i + 1: p for i, p in enumerate(objects) if p is not None}
    else:
        raise ValueError(f"frame {index}: give Instances, a Prompt, a list of Prompts or a dict {{id: Prompt}}; "
                         f"got {type(objects).__name__}")
    if not items:
        raise ValueError(f"no prompts on frame {index}")
    out = {}
    for object_id, p in items.items():
        if not isinstance(p, Prompt) or int(object_id) <= 0:
            raise ValueError(f"frame {index}: object {object_id!r} needs a unisam.Prompt and an id > 0")
        out[int(object_id)] = make_prompt(p.points, p.point_labels, p.box, p.mask, p.label, image_size=size)
    return out
