"""The unisam dock widget: prompt layers in, Labels layers out; every model step is a unisam core call.

Layers it manages (created aligned with the image layer: same scale and translate):
``point_prompts`` (Points, bool feature ``positive``, green = positive, red = negative),
``box_prompts`` (Shapes rectangles), ``current_object`` (Labels, the object being prompted),
``committed_objects`` (Labels, one id per committed object), ``unisam_segmentation`` (Labels, from
"segment all"); on stacks (time-lapse or z) "track all" adds ``unisam_tracks`` (Labels, one id per
track) and ``unisam_lineage`` (Tracks, with divisions) and never replaces an earlier run's layers.
Slow work (embedding, propagation, tracking, segment all) runs in a worker thread with napari
progress; decoding a prompt is fast and runs synchronously on each prompt change.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, PushButton, Select, SpinBox, TextEdit,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning

import unisam

from ._convert import (
    ImageSource, image_source, keyframe_objects, object_names, objects_of, paint_tracks, prompt_on_slice,
    tracks_layer_data, with_names,
)

POINTS, BOXES = "point_prompts", "box_prompts"
CURRENT, COMMITTED, SEGMENTATION = "current_object", "committed_objects", "unisam_segmentation"
TRACKS, LINEAGE = "unisam_tracks", "unisam_lineage"
SEGMENT_EVERYTHING = "segment everything"  # "track all" finds the objects itself
KEYFRAMES = "unisam_keyframes"  # committed_objects.metadata: {frame: {ids drawn or accepted there}}
LINKERS = [("overlap + appearance (Hungarian)", "hungarian"), ("cells: laptrack (divisions)", "laptrack")]
POLARITY_COLOURS = {True: "lime", False: "red"}
KEYS = {"segment": "Shift-S", "commit": "Shift-C", "toggle_polarity": "Shift-T", "clear_prompts": "Shift-X"}
_DONE = ("added", "removed", "changed")  # data event actions after an edit (not the "-ing" previews)
logger = logging.getLogger("unisam.napari")


def _reported(action):
    """Run a widget action; no exception reaches Qt: bad input (``ValueError``), missing weights and
    files that cannot be read or written (``OSError``) become a napari error notification with the
    message; anything else too, named by its type, with the traceback in the log."""

    @functools.wraps(action)
    def run(self, *args, **kwargs):
        try:
            return action(self, *args, **kwargs)
        except (ValueError, OSError, unisam.WeightsNotFoundError) as error:
            show_error(f"unisam: {error}")
        except Exception as error:  # a bug, not the user's input: say so, keep the viewer running
            logger.exception("unisam: %s failed", action.__name__)
            show_error(f"unisam: {action.__name__} failed ({type(error).__name__}: {error}); details in the log")
        return None

    return run


class UnisamWidget(Container):
    """Interactive segmentation with unisam: embed, prompt, commit, propagate, segment all."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, embedding_dir: str | Path | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.embedding_dir = Path(embedding_dir) if embedding_dir else unisam.cache_dir() / "embeddings"
        self.worker = None  # the running background job, if any
        self._muted = False  # set while the widget itself edits the prompt layers

        self.images = Select(label="image layer(s)", choices=self._image_choices, allow_multiple=True)
        self.images.tooltip = "one layer (grey or RGB), or 2-3 grey layers used as channels; none = topmost image"
        self.images.native.setMaximumHeight(90)
        self.model = ComboBox(label="model", choices=unisam.list_models(), value=unisam.default_model())
        self.tiled = CheckBox(text="large image: work in tiles")
        self.polarity = Label(value="new points: positive")
        self.commit_id = SpinBox(label="commit as id", value=0, min=0, max=2**31 - 1)
        self.commit_id.tooltip = "0: a new id; an existing id replaces that object on this slice (a correction)"
        self.segmentation = ComboBox(label="track all from", choices=self._segmentation_choices)
        self.segmentation.tooltip = "find the objects on every frame, or link your own per-frame Labels layer"
        self.linker = ComboBox(label="linking", choices=LINKERS, value="hungarian")
        self.object_name = LineEdit(label="name")
        self.object_name.tooltip = "a class name for the objects you commit (examples for 'name objects')"
        self.vocabulary = TextEdit(label="vocabulary")
        self.vocabulary.tooltip = (
            "class names for 'name objects', one per line, synonyms after commas (needs a CLIP model); "
            "empty: name objects like the ones you named yourself"
        )
        self.label_model = LineEdit(label="CLIP model")
        self.label_model.tooltip = f"open_clip 'arch/pretrained' or an exported folder; empty: {unisam.DEFAULT_LABEL_MODEL}"
        self.unknown = FloatSpinBox(label="unknown below", value=0.0, min=0.0, max=1.0, step=0.05)
        self.unknown.tooltip = "an object whose best class probability is below this stays unnamed"
        buttons = {
            "embed": "Compute embeddings",
            "segment": f"Segment [{KEYS['segment']}]",
            "toggle_polarity": f"Toggle polarity [{KEYS['toggle_polarity']}]",
            "commit": f"Commit object [{KEYS['commit']}]",
            "clear_prompts": f"Clear prompts [{KEYS['clear_prompts']}]",
            "propagate": "Propagate through stack",
            "segment_all": "Segment all",
            "track": "Track from this frame",
            "track_all": "Track all (automatic)",
            "name_objects": "Name objects",
        }
        self.buttons = {name: PushButton(text=text) for name, text in buttons.items()}
        self.everything = {option.name: _option_box(option) for option in unisam.EverythingParams.options(True)}
        self.everything["points_per_side"].value = 16  # 32 is SAM's; 16 is 4x faster
        self._use_model_thresholds()
        self.model.changed.connect(self._use_model_thresholds)
        self.extend(
            [
                self.images,
                self.model,
                self.tiled,
                self.buttons["embed"],
                self.polarity,
                self.buttons["segment"],
                self.buttons["toggle_polarity"],
                self.commit_id,
                self.object_name,
                *(self.buttons[n] for n in ("commit", "clear_prompts", "propagate")),
                *self.everything.values(),
                self.buttons["segment_all"],
                Label(value="time-lapse / stack tracking"),
                self.buttons["track"],
                self.segmentation,
                self.linker,
                self.buttons["track_all"],
                Label(value="names"),
                self.vocabulary,
                self.label_model,
                self.unknown,
                self.buttons["name_objects"],
            ]
        )
        for name in buttons:
            self.buttons[name].changed.connect(getattr(self, name))
        for name, key in KEYS.items():
            self.viewer.bind_key(key, functools.partial(_call, self, name), overwrite=True)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.images.changed.connect(self._prepare)
        self._prepare()

    # ------------------------------------------------------------------ actions
    @_reported
    def embed(self) -> None:
        """Embed the image (every slice of a stack, every tile in tiled mode) in the background, so
        prompts decode at once; embeddings are also kept on disk for the next session."""
        source, _ = self._source()
        predictor, tiled = self._predictor(), self.tiled.value

        def work():
            for z in range(source.n_slices):
                yield from unisam.embed(source.image(z), model=predictor, tiles=tiled)

        total = 0 if tiled else source.n_slices  # 0: tile count unknown here, an indeterminate bar
        self._start(work, total, "unisam: computing embeddings")

    @_reported
    def segment(self) -> np.ndarray | None:
        """Segment the current object from the prompts on the current slice into ``current_object``."""
        source, layer = self._source()
        points, boxes, current, _ = self._object_layers(source, layer)
        z = self._slice(source, layer)
        coords = np.array([layer.world_to_data(points.data_to_world(p)) for p in points.data]).reshape(-1, layer.ndim)
        corners = [np.array([layer.world_to_data(boxes.data_to_world(v)) for v in shape]) for shape in boxes.data]
        prompt = prompt_on_slice(coords, points.features["positive"].to_numpy(bool), corners, z, source.shape)
        data = current.data
        data[...] = 0
        mask = None
        if prompt is not None:
            found = unisam.segment(source.image(z), prompt, model=self._predictor(), tiles=self.tiled.value)
            mask = found.masks[0]
            data[(z,) if source.is_stack else ()][mask] = 1
        current.refresh()
        return mask

    @_reported
    def commit(self) -> int | None:
        """Copy the current object into ``committed_objects`` under a new id (or, with *commit as id*,
        in place of that object on this slice); clear the prompts. On a stack the slice becomes a
        keyframe of the object for tracking."""
        source, layer = self._source()
        _, _, current, committed = self._object_layers(source, layer)
        mask = current.data > 0
        if not mask.any():
            show_warning("unisam: nothing to commit: segment an object first")
            return None
        new_id = self.commit_id.value or int(committed.data.max()) + 1
        z = self._slice(source, layer)
        here = committed.data[(z,) if source.is_stack else ()]
        here[here == new_id] = 0
        committed.data[mask] = new_id
        if source.is_stack:
            _keyframes(committed).setdefault(z, set()).add(new_id)
        name = self.object_name.value.strip()
        if name:
            committed.features = with_names(committed.features, [new_id], [name], [1.0], "user")
        committed.refresh()
        self.clear_prompts()
        return new_id

    @_reported
    def clear_prompts(self) -> None:
        """Remove all prompts and the current object."""
        source, layer = self._source()
        points, boxes, current, _ = self._object_layers(source, layer)
        self._muted = True
        try:
            points.data = np.zeros((0, points.ndim))
            boxes.data = []
        finally:
            self._muted = False
        current.data[...] = 0
        current.refresh()

    @_reported
    def toggle_polarity(self) -> bool:
        """Switch the points added next between positive (object) and negative (background)."""
        points = self._object_layers(*self._source())[0]
        positive = not bool(np.asarray(points.feature_defaults["positive"])[0])
        points.feature_defaults = {"positive": positive}
        self.polarity.value = f"new points: {'positive' if positive else 'negative'}"
        return positive

    @_reported
    def propagate(self) -> None:
        """Follow an object from the current slice through the stack (core ``propagate``) into
        ``committed_objects`` under its id, on pixels no other object holds: the current object
        (committed first), else the newest committed object on this slice."""
        source, layer = self._source()
        if not source.is_stack:
            raise ValueError("propagation needs a 3D stack (z or time) image layer")
        _, _, current, committed = self._object_layers(source, layer)
        z = self._slice(source, layer)
        self._check_idle()
        object_id = self.commit() if current.data[z].any() else int(committed.data[z].max())
        if not object_id:
            raise ValueError("segment (or commit) an object on this slice first, then propagate it")
        start_mask = committed.data[z] == object_id
        predictor = self._predictor()

        def work():
            steps = unisam.propagate(source.frames(), z, start_mask, model=predictor, object_id=object_id, stream=True)
            yield from (step for step in steps if step[0] != z)

        def paint(step: tuple[int, unisam.Instances]) -> None:  # other committed objects keep their pixels
            index, found = step
            target = committed.data[index]
            target[found.masks[0] & (target == 0)] = object_id
            committed.refresh()

        self._start(work, source.n_slices - 1, "unisam: propagating", on_yield=paint)

    @_reported
    def track(self) -> None:
        """Follow the objects of ``committed_objects`` through the stack (core ``track``), keeping
        their ids: the objects shown on this slice (the current object committed first) and those
        committed on other slices start from there, forwards and backwards. Those slices keep what
        they show (fix an object there by brush or *commit as id*, then track again: that slice
        becomes one of them); elsewhere the tracked objects are redrawn, other objects untouched."""
        source, layer = self._source()
        if not source.is_stack:
            raise ValueError("tracking needs a stack (time-lapse or z) image layer; this one is 2D")
        _, _, current, committed = self._object_layers(source, layer)
        z = self._slice(source, layer)
        self._check_idle()
        if current.data[z].any():
            self.commit()
        keyframes = _keyframes(committed)
        shown = set(np.unique(committed.data[z]).tolist()) - {0}
        if shown:
            keyframes.setdefault(z, set()).update(shown)
        start = keyframe_objects(committed.data, keyframes)
        if not start:
            raise ValueError("segment and commit objects on a frame first, then track them")
        frames, predictor = source.frames(), self._predictor()

        def work():
            return (yield from _reporting(lambda report: unisam.track(frames, start, model=predictor, progress=report)))

        def paint(tracks: unisam.Tracks) -> None:
            paint_tracks(committed.data, tracks, [i for found in start.values() for i in found.ids.tolist()])
            committed.refresh()
            show_info(f"unisam: tracked {len(tracks.ids())} objects through {len(tracks)} frames")

        self._start(work, 0, "unisam: tracking", on_yield=self._advance, on_return=paint)

    @_reported
    def track_all(self) -> None:
        """Automatic tracking (core ``track`` with no prompts): every object found on every frame (or
        the chosen Labels layer's objects) linked into tracks, shown as a new ``unisam_tracks`` Labels
        layer and a ``unisam_lineage`` Tracks layer (divisions as its graph, with laptrack)."""
        source, layer = self._source()
        if not source.is_stack:
            raise ValueError("tracking needs a stack (time-lapse or z) image layer; this one is 2D")
        self._check_idle()
        options = {"method": self.linker.value}
        instances = None
        if self.segmentation.value == SEGMENT_EVERYTHING:
            options.update({name: box.value for name, box in self.everything.items()})
        else:
            instances = self._own_segmentation(self.segmentation.value, source)
        frames, predictor = source.frames(), self._predictor()

        def work():
            return (yield from _reporting(lambda report: unisam.track(
                frames, model=predictor, instances=instances, progress=report, **options)))

        def show(tracks: unisam.Tracks) -> None:
            where = {"scale": layer.scale, "translate": layer.translate}
            self.viewer.add_labels(tracks.to_label_stack(), name=TRACKS, **where)
            data, graph = tracks_layer_data(tracks)
            if len(data):
                self.viewer.add_tracks(data, graph=graph, name=LINEAGE, **where)
            show_info(f"unisam: {len(tracks.ids())} tracks, {len(tracks.lineage)} divisions")

        self._start(work, 0, "unisam: tracking all objects", on_yield=self._advance, on_return=show)

    @_reported
    def segment_all(self) -> None:
        """Automatic masks for the current slice (core ``segment_everything``, tiled in tiled mode) into
        ``unisam_segmentation``."""
        source, layer = self._source()
        z = self._slice(source, layer)
        image, predictor, tiled = source.image(z), self._predictor(), self.tiled.value
        params = {name: box.value for name, box in self.everything.items()}

        def work():
            yield unisam.segment_everything(image, model=predictor, tiles=tiled, **params)

        def show(instances: unisam.Instances) -> None:
            labels = self._labels_layer(SEGMENTATION, source, layer)
            labels.data[(z,) if source.is_stack else ()][...] = instances.to_label_image()
            labels.refresh()
            show_info(f"unisam: {len(instances)} objects")

        self._start(work, 0, "unisam: segmenting everything", on_yield=show)

    @_reported
    def name_objects(self) -> None:
        """Name the committed objects on this slice that the user has not named (core ``label``): from
        the typed vocabulary with a CLIP model, else by example from the objects the user named (on
        any slice; the SAM embeddings only, no CLIP needed). Names go to the layer's features."""
        source, layer = self._source()
        committed = self._object_layers(source, layer)[3]
        z = self._slice(source, layer)
        here = committed.data[(z,) if source.is_stack else ()]
        named = object_names(committed.features)
        by_user = {i: name for i, (name, by) in named.items() if by == "user"}
        targets = objects_of(here, set(np.unique(here).tolist()) - set(by_user) - {0})
        if not len(targets):
            raise ValueError("no unnamed committed objects on this slice: segment and commit objects first")
        text = self.vocabulary.value.strip()
        if text:
            options = {"vocabulary": unisam.Vocabulary.from_text(text), "model": self.label_model.value.strip() or None}
        else:
            options = {"examples": self._named_examples(source, committed.data, by_user), "segment_model": self._predictor()}
        image = source.image(z)

        def work():
            yield unisam.label(image, targets, unknown=self.unknown.value, **options)

        def show(result: unisam.Instances) -> None:
            committed.features = with_names(committed.features, result.ids.tolist(), result.labels,
                                            result.label_scores, "unisam")
            show_info(f"unisam: named {sum(n is not None for n in result.labels)} of {len(result)} objects")

        self._start(work, 0, "unisam: naming objects", on_yield=show)

    def _named_examples(self, source: ImageSource, data: np.ndarray, by_user: dict[int, str]) -> list:
        """``(image, Instances with labels)`` of the objects the user named, per slice where they are."""
        if not by_user:
            raise ValueError("type a vocabulary, or give a few objects a name when you commit them (the 'name' box)")
        planes = range(source.n_slices) if source.is_stack else [None]
        examples = []
        for z in planes:
            found = objects_of(data[(z,) if z is not None else ()], by_user)
            if len(found):
                named = dataclasses.replace(found, labels=[by_user[i] for i in found.ids.tolist()])
                examples.append((source.image(z), named))
        return examples

    # ------------------------------------------------------------------ helpers
    def _use_model_thresholds(self, _value=None) -> None:
        """Segment-all thresholds: the chosen model's own defaults (:func:`unisam.everything_defaults`)."""
        defaults = unisam.everything_defaults(self.model.value)
        for name, box in self.everything.items():
            if name != "points_per_side":
                box.value = getattr(defaults, name)

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _segmentation_choices(self, _widget=None) -> list[str]:
        """What "track all" links: segment everything, or a 3D Labels layer (the user's own)."""
        own = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels) and layer.ndim == 3]
        return [SEGMENT_EVERYTHING, *(name for name in own if name != CURRENT)]

    def _own_segmentation(self, name: str, source: ImageSource) -> np.ndarray:
        """The chosen Labels layer's data as the ``(T, H, W)`` integer stack ``track`` links."""
        if name not in self.viewer.layers:
            raise ValueError(f"the Labels layer {name!r} is gone; choose another in 'track all from'")
        data = np.asarray(self.viewer.layers[name].data)
        if data.shape != source.labels_shape:
            raise ValueError(f"the Labels layer {name!r} has shape {data.shape}, the image stack {source.labels_shape}")
        return data

    def _on_layers_changed(self, event) -> None:
        self.images.reset_choices()
        self.segmentation.reset_choices()
        if isinstance(event.value, Image):
            self._prepare()

    def _prepare(self) -> None:
        """Create the prompt and object layers for the selected image, if it can be segmented (problems
        are reported when the user acts)."""
        try:
            self._object_layers(*self._source())
        except ValueError:
            pass

    def _source(self) -> tuple[ImageSource, Image]:
        """The selected image layer(s) as an ImageSource, and the layer whose transform prompts use."""
        layers = list(self.images.value) or [layer for _, layer in self._image_choices()][-1:]
        source = image_source([layer.data for layer in layers], [layer.rgb for layer in layers])
        return source, layers[0]

    def _predictor(self) -> unisam.Predictor:
        return unisam.get_model(self.model.value, disk_cache=self.embedding_dir)

    def _slice(self, source: ImageSource, layer: Image) -> int | None:
        """The stack slice shown in the viewer (None for a 2D image)."""
        if not source.is_stack:
            return None
        z = int(np.round(layer.world_to_data(self.viewer.dims.point)[0]))
        return min(max(z, 0), source.n_slices - 1)

    def _object_layers(self, source: ImageSource, layer: Image) -> tuple[Points, Shapes, Labels, Labels]:
        """The prompt and object layers, created (or re-created for another image shape) as needed."""
        ndim = len(source.labels_shape)
        points = self._prompt_layer(POINTS, Points, ndim, layer)
        if points is None:
            points = self.viewer.add_points(
                np.zeros((0, ndim)),
                name=POINTS,
                features={"positive": np.zeros(0, bool)},
                feature_defaults={"positive": True},
                face_color="positive",
                face_color_cycle=POLARITY_COLOURS,
                border_color="white",
                size=max(source.shape) / 40,
                scale=layer.scale,
                translate=layer.translate,
            )
            points.events.data.connect(self._on_prompts_changed)
            points.mode = "add"
            self.viewer.layers.selection.active = points
        boxes = self._prompt_layer(BOXES, Shapes, ndim, layer)
        if boxes is None:
            boxes = self.viewer.add_shapes(
                name=BOXES,
                ndim=ndim,
                face_color="transparent",
                edge_color="yellow",
                edge_width=max(source.shape) / 200,
                scale=layer.scale,
                translate=layer.translate,
            )
            boxes.events.data.connect(self._on_prompts_changed)
        committed = self._labels_layer(COMMITTED, source, layer)
        current = self._labels_layer(CURRENT, source, layer)
        return points, boxes, current, committed

    def _labels_layer(self, name: str, source: ImageSource, layer: Image) -> Labels:
        """A Labels layer over the image: reused when it has the image's shape (and moved onto the image
        if that has another scale or translate), else made anew."""
        labels = self.viewer.layers[name] if name in self.viewer.layers else None
        if not isinstance(labels, Labels) or labels.data.shape != source.labels_shape:
            if labels is not None:
                self.viewer.layers.remove(labels)
            labels = self.viewer.add_labels(np.zeros(source.labels_shape, np.int32), name=name)
        if not (np.array_equal(labels.scale, layer.scale) and np.array_equal(labels.translate, layer.translate)):
            labels.scale, labels.translate = layer.scale, layer.translate
        return labels

    def _prompt_layer(self, name: str, kind: type, ndim: int, layer: Image):
        """An existing prompt layer of the right kind and dimensionality (None when it must be made)."""
        if name not in self.viewer.layers:
            return None
        found = self.viewer.layers[name]
        if isinstance(found, kind) and found.ndim == ndim:
            return found
        self.viewer.layers.remove(found)
        return None

    def _on_prompts_changed(self, event) -> None:
        if not self._muted and str(getattr(event, "action", "changed")) in _DONE:
            self.segment()

    def _start(self, work, total: int, description: str, on_yield=None, on_return=None) -> None:
        """Run the generator function ``work`` in a worker thread with a napari progress bar (advanced
        by each yield, or by ``on_yield`` when ``total`` is 0); ``on_return`` gets its return value."""
        self._check_idle()
        worker = thread_worker(work, progress={"total": total, "desc": description}, ignore_errors=True)()
        if on_yield is not None:
            worker.yielded.connect(on_yield)
        if on_return is not None:
            worker.returned.connect(on_return)
        worker.errored.connect(lambda error: show_error(f"unisam: {error}"))
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()

    def _check_idle(self) -> None:
        if self.worker is not None:
            raise ValueError("another unisam job is still running; wait for it to finish")

    def _finished(self) -> None:
        self.worker = None

    def _advance(self, report: tuple[int, int]) -> None:
        """Move the running job's progress bar to ``(done, total)``."""
        if self.worker is not None:
            bar = self.worker.pbar
            bar.total = report[1]
            bar.update(report[0] - bar.n)


def _keyframes(committed: Labels) -> dict[int, set[int]]:
    """The frames where objects were committed or tracked from, kept with the layer (its metadata)."""
    return committed.metadata.setdefault(KEYFRAMES, {})


def _reporting(call: Callable[[Callable[[int, int], None]], object]) -> Iterator[tuple[int, int]]:
    """Run ``call(report)`` in a thread of its own, yield each ``(done, total)`` it reports as it
    comes, and return its result (a worker's generator can then drive a progress bar)."""
    reports: queue.SimpleQueue = queue.SimpleQueue()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call, lambda done, total: reports.put((done, total)))
        while not (future.done() and reports.empty()):
            try:
                yield reports.get(timeout=0.05)
            except queue.Empty:
                pass
        return future.result()


def _option_box(option) -> SpinBox | FloatSpinBox:
    """A spin box for one :class:`unisam.EverythingParams` option (its help as the tooltip)."""
    label = option.name.replace("_", " ").replace("thresh", "threshold")
    top = option.maximum if option.maximum is not None else 10**6
    if option.kind is int:
        box = SpinBox(label=label, value=int(option.default), min=int(option.minimum), max=int(top))
    else:  # fractions in steps of 0.05, sizes in pixels
        box = FloatSpinBox(label=label, value=option.default, min=option.minimum, max=top,
                           step=0.05 if option.maximum == 1 else 1.0)
    box.tooltip = option.help
    return box


def _call(widget: UnisamWidget, action: str, _viewer=None) -> None:
    """Keyboard shortcut handler (napari passes the viewer)."""
    getattr(widget, action)()
