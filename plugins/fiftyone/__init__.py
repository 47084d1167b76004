"""unisam FiftyOne plugin: instance masks from prompts, or for everything, on the App's target view;
objects tracked through videos.

Operators ``@unisam/unisam/segment_with_prompts`` and ``@unisam/unisam/segment_everything`` write a
new ``Detections`` field on images, ``@unisam/unisam/track`` a new frame-level ``Detections`` field
on videos (``index`` = track id); masks are cropped to their boxes, or PNGs under a chosen
directory. Samples whose media cannot be read or that lack their prompts are skipped (no label, no
mask file) and listed with the reason in the field's ``info["unisam"]`` run summary; boxes
overhanging the image are cut to it. An existing output field is replaced only with ``overwrite``.
Track runs, delegated or immediate, report progress frame by frame. ``@unisam/unisam/prelabel`` runs
the resumable prelabel job, optionally as shards that several ``fiftyone delegated launch`` workers
share.
From Python: ``foo.get_operator(uri)(dataset_or_view, ...)``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import TypeVar

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.view as fov
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionOptions
from fiftyone.operators.message import GeneratedMessage

import unisam

from .unisam_fiftyone.prelabel import DetectionsSink, prelabel_dataset, shard_of
from .unisam_fiftyone.zoo import from_detections, keyframes_from_labels, segment_sample, set_label, to_detections

logger = logging.getLogger("unisam.fiftyone")
T = TypeVar("T")

WRITE_EVERY = 16  # samples computed between two database writes
SUGGEST_DELEGATION_ABOVE = 200  # samples; immediate runs stop after fo.config.operator_timeout (600 s)
EVERYTHING_OPTIONS = unisam.EverythingParams.options(common_only=True)  # the ones the form shows
TRACK_OPTIONS = [f.name for f in dataclasses.fields(unisam.TrackRules)]  # prompted tracking's rules
TRACK_FORM_OPTIONS = {  # the ones the form shows, with their help
    "score_threshold": "a mask whose predicted IoU is below this is a miss",
    "patience": "a track ends after more misses in a row than this (occlusions)",
}


class _Segment(foo.Operator):
    """What the operators share: the form, the checks, the per-sample loop with progress and
    failure reports, and writing. Subclasses add their own inputs and compute one sample's labels.

    Image operators read and write sample fields; video operators (``media_type = "video"``)
    frame fields, one ``Detections`` per frame."""

    about: dict = {}  # name, label, description
    default_field = ""
    media_type = "image"  # the samples the operator reads
    write_every = WRITE_EVERY  # samples computed between two database writes
    info_key = "unisam"  # the run summary's key in the output field's info
    verb = "segmented"  # what the final message says was done to the samples
    mask_files = True  # the form offers a mask directory (PNG files instead of masks in the database)
    progress_within = False  # compute reports work within a sample (a video's frames) to its progress callback

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            **self.about,
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    # -- subclass hooks ---------------------------------------------------------------------------
    def own_defaults(self) -> dict:
        return {}

    def own_inputs(self, ctx, inputs: types.Object) -> dict:
        """Add the operator's own inputs; return them by name (for error messages)."""
        return {}

    def own_problems(self, ctx) -> dict[str, str]:
        return {}

    def prompt_fields(self, ctx) -> list[str]:
        return []

    def compute(self, ctx, sample, predictor: unisam.Predictor, progress=None):
        """One sample's labels: ``fol.Detections`` (images: ``segment`` of its image) or, for videos,
        ``{frame number: fol.Detections}``. Raises ``ValueError``/``OSError`` to skip the sample.
        ``progress``: with ``progress_within``, a ``(done, total)`` callback for work within the
        sample (frames of a video), called from a worker thread (see :func:`_reporting`); else None."""
        return self.segment(ctx, unisam.load_image(sample.filepath), sample, predictor)

    # image operators define ``segment(ctx, image, sample, predictor) -> fol.Detections``

    # -- fields -----------------------------------------------------------------------------------
    def schema(self, ctx, kind=None) -> dict:
        """The fields prompts are read from and results written to: the samples' or the frames'."""
        if self.media_type == "video":
            return ctx.dataset.get_frame_field_schema(embedded_doc_type=kind) or {}
        return ctx.dataset.get_field_schema(embedded_doc_type=kind)

    def path(self, field: str) -> str:
        """``field`` as FiftyOne names it on a collection (``frames.<field>`` for frame fields)."""
        return f"frames.{field}" if self.media_type == "video" else field

    # -- parameters -------------------------------------------------------------------------------
    def param(self, ctx, name: str):
        """``ctx.params[name]``, or its default (Python callers may leave any parameter out)."""
        value = ctx.params.get(name)
        if value is not None:
            return value
        defaults = {"model": unisam.default_model(), "label_field": self.default_field, "overwrite": False}
        return {**defaults, **self.own_defaults()}.get(name)

    def run_params(self, ctx) -> dict:
        names = ["model", "label_field", "overwrite", "output_dir", *self.own_defaults()]
        return {name: self.param(ctx, name) for name in names}

    def problems(self, ctx, view) -> dict[str, str]:
        """Parameter name -> why the run cannot go ahead (shown in the form, raised by execute)."""
        found = {}
        if view.media_type != self.media_type:
            found["view_target"] = (
                f"{self.about['label']} works on {self.media_type} samples; the target view holds "
                f"{view.media_type} samples"
            )
        elif view.count() == 0:
            found["view_target"] = "the target view has no samples: nothing to do"
        try:
            unisam.model_name(self.param(ctx, "model"))
        except ValueError as error:
            found["model"] = str(error)
        found.update(self.own_problems(ctx))
        found.update(self.output_problems(ctx))
        return found

    def output_problems(self, ctx) -> dict[str, str]:
        """Why the output field cannot be written: a bad name, a prompt field, another type, or an
        existing field without 'overwrite'."""
        found = {}
        field = self.param(ctx, "label_field")
        schema = self.schema(ctx)
        if not field or "." in field or field.startswith("_"):
            found["label_field"] = "the output field needs a name without '.' that does not start with '_'"
        elif field in self.prompt_fields(ctx):
            found["label_field"] = f"the output field must not be a prompt field ({field!r})"
        elif field in schema and not _holds(schema[field], fol.Detections):
            found["label_field"] = f"field {field!r} exists and does not hold Detections; choose a new name"
        elif field in schema and not self.param(ctx, "overwrite"):
            found["label_field"] = (
                f"field {field!r} already exists: tick 'overwrite' to replace its values on the target "
                "samples, or choose a new name"
            )
        return found

    # -- form -------------------------------------------------------------------------------------
    def resolve_input(self, ctx):
        inputs = types.Object()
        props = {"view_target": inputs.view_target(ctx)}
        props.update(self.own_inputs(ctx, inputs))
        models = types.DropdownView()
        for name in unisam.list_models():
            models.add_choice(name, label=name)
        props["model"] = inputs.enum(
            "model",
            models.values(),
            default=unisam.default_model(),
            label="Model",
            description="unisam-tiny ships with unisam; others need `unisam weights pull NAME` first",
            view=models,
        )
        props["label_field"] = inputs.str(
            "label_field",
            default=self.default_field,
            label="Output field",
            description=f"a new {'frame-level ' if self.media_type == 'video' else ''}Detections field",
        )
        props["overwrite"] = inputs.bool(
            "overwrite",
            default=False,
            label="Overwrite",
            description="replace the output field's values on the target samples if the field exists",
            view=types.CheckboxView(),
        )
        if self.mask_files:
            props["output_dir"] = inputs.str(
                "output_dir",
                label="Mask directory (optional)",
                description="write masks as PNG files here (Detection.mask_path) instead of into the database",
            )
        for name, message in self.problems(ctx, ctx.target_view()).items():
            props[name].invalid = True
            props[name].error_message = message
        return types.Property(inputs, view=types.View(label=self.about["label"]))

    def resolve_execution_options(self, ctx):
        large = ctx.target_view().count() > SUGGEST_DELEGATION_ABOVE
        return ExecutionOptions(
            allow_immediate_execution=True, allow_delegated_execution=True, default_choice_to_delegated=large
        )

    # -- run --------------------------------------------------------------------------------------
    def execute(self, ctx):
        view = ctx.target_view()
        found = self.problems(ctx, view)
        if found:
            raise ValueError("; ".join(found.values()))
        predictor = unisam.get_model(self.param(ctx, "model"))
        field = self.param(ctx, "label_field")
        mask_dir = self.param(ctx, "output_dir")
        ids = view.values("id")
        samples = view.select_fields([self.path(name) for name in self.prompt_fields(ctx)])
        failed: dict[str, str] = {}
        done = segmented = instances = 0
        for start in range(0, len(ids), self.write_every):
            results = {}
            for sample in samples.select(ids[start : start + self.write_every], ordered=True):
                try:
                    if self.progress_within:
                        work = functools.partial(self.compute, ctx, sample, predictor)
                        labels = yield from _reporting(ctx, work, done, len(ids))
                    else:
                        labels = self.compute(ctx, sample, predictor)
                    by_frame = dict(labels) if self.media_type == "video" else {None: labels}
                    if mask_dir:  # a sample whose masks cannot all be written gets none of its labels
                        _export_masks(by_frame, os.path.abspath(os.path.join(mask_dir, field)), sample.id)
                except (ValueError, OSError) as error:
                    failed[sample.id] = str(error)
                    logger.warning("unisam: skipped sample %s (%s): %s", sample.id, sample.filepath, error)
                else:
                    instances += sum(len(detections.detections) for detections in by_frame.values())
                    results[sample.id] = labels
                done += 1
                yield from _report(ctx, done / len(ids), f"{done} / {len(ids)} samples")
            if results:
                ctx.dataset.set_values(self.path(field), results, key_field="id")
            segmented += len(results)
        summary = {
            "operator": self.uri,
            "params": self.run_params(ctx),
            "samples": len(ids),
            "segmented": segmented,
            "instances": instances,
            "failed": failed,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _record(ctx.dataset, self.path(field), summary, self.info_key)
        message = f"unisam: {segmented} / {len(ids)} samples {self.verb} into {field!r} ({instances} masks)"
        if failed:
            message += f"; {len(failed)} skipped, listed in the field's info[{self.info_key!r}]['failed']"
        logger.info(message)
        if not ctx.delegated:
            yield ctx.ops.notify(message, variant="warning" if failed else "success")
            yield ctx.ops.reload_dataset()

    def run_from_python(self, samples, params: dict, delegate: bool):
        """Run on a Dataset or DatasetView through FiftyOne's executor. Returns the run summary
        (immediate), or the queued operation's ``ExecutionResult`` (``delegate=True``)."""
        ctx = {"view": samples} if isinstance(samples, fov.DatasetView) else {"dataset": samples}
        params = {name: value for name, value in params.items() if value is not None}
        result = foo.execute_operator(self.uri, ctx, params=params, request_delegation=delegate)
        if delegate:
            return result
        return samples.get_field(self.path(params.get("label_field", self.default_field))).info[self.info_key]


class SegmentWithPrompts(_Segment):
    """Boxes of a Detections field and/or points of a Keypoints field -> one instance mask each."""

    about = dict(
        name="segment_with_prompts",
        label="unisam: segment with prompts",
        description="Instance masks from the boxes of a Detections field and/or the points of a Keypoints field",
    )
    default_field = "unisam_masks"

    def __call__(
        self,
        samples,
        box_field: str | None = None,
        point_field: str | None = None,
        label_field: str | None = None,
        model: str | None = None,
        output_dir: str | None = None,
        overwrite: bool = False,
        delegate: bool = False,
    ):
        params = dict(
            box_field=box_field,
            point_field=point_field,
            label_field=label_field,
            model=model,
            output_dir=output_dir,
            overwrite=overwrite,
        )
        return self.run_from_python(samples, params, delegate)

    def own_defaults(self) -> dict:
        return {"box_field": None, "point_field": None}

    def prompt_fields(self, ctx) -> list[str]:
        return [name for name in (self.param(ctx, "box_field"), self.param(ctx, "point_field")) if name]

    def own_inputs(self, ctx, inputs):
        props = {}
        for key, kind, description in (
            ("box_field", fol.Detections, "each box prompts one mask, named by the box's label"),
            ("point_field", fol.Keypoints, "each keypoint prompts one mask; polarity from its sam_labels"),
        ):
            choices = types.DropdownView()
            for name in self.schema(ctx, kind):
                choices.add_choice(name, label=name)
            props[key] = inputs.enum(
                key, choices.values(), label=f"{kind.__name__} field", description=description, view=choices
            )
        return props

    def own_problems(self, ctx) -> dict[str, str]:
        found = {}
        if not self.prompt_fields(ctx):
            found["box_field"] = "choose a Detections field (boxes) and/or a Keypoints field (points)"
        for key, kind in (("box_field", fol.Detections), ("point_field", fol.Keypoints)):
            name = self.param(ctx, key)
            if name and name not in self.schema(ctx, kind):
                found[key] = f"{name!r} is not a {kind.__name__} field of dataset {ctx.dataset.name!r}"
        return found

    def segment(self, ctx, image, sample, predictor):
        labels = {}
        for key in ("box_field", "point_field"):
            name = self.param(ctx, key)
            if name:
                labels[key] = sample.get_field(name)
                if labels[key] is None:
                    raise ValueError(f"the sample has no {name!r} prompts")
        return segment_sample(image, labels.get("box_field"), labels.get("point_field"), predictor)


class SegmentEverything(_Segment):
    """Automatic instance masks for every sample (SAM's automatic mask generator recipe), optionally
    named from a vocabulary in the same run (``unisam.segment_and_label``)."""

    about = dict(
        name="segment_everything",
        label="unisam: segment everything",
        description="Automatic instance masks for every sample of the target view, optionally labelled",
    )
    default_field = "unisam_everything"

    def __call__(
        self,
        samples,
        label_field: str | None = None,
        model: str | None = None,
        output_dir: str | None = None,
        overwrite: bool = False,
        delegate: bool = False,
        vocabulary: str | list[str] | None = None,
        label_model: str | None = None,
        **everything,
    ):
        """``vocabulary`` (a list, or text with one class per line): name each mask with ``label_model``."""
        unisam.EverythingParams().replace(**everything)  # unknown names or bad values raise here
        if isinstance(vocabulary, (list, tuple)):
            vocabulary = "\n".join(vocabulary)
        params = dict(label_field=label_field, model=model, output_dir=output_dir, overwrite=overwrite,
                      vocabulary=vocabulary, label_model=label_model, **everything)
        return self.run_from_python(samples, params, delegate)

    def own_defaults(self) -> dict:
        # None: the model's own default; no vocabulary: masks without names
        return {**dict.fromkeys(unisam.EverythingParams.names()), "vocabulary": None, "label_model": None}

    def own_inputs(self, ctx, inputs):
        props = _everything_inputs(inputs, self.param(ctx, "model"))
        props["vocabulary"] = inputs.str(
            "vocabulary", label="Vocabulary (optional)", view=types.TextFieldView(multiline=True),
            description="name each mask: one class per line, synonyms after commas (a CLIP model)",
        )
        props["label_model"] = inputs.str(
            "label_model", label="CLIP model",
            description=f"open_clip 'arch/pretrained' or an exported folder (default {unisam.DEFAULT_LABEL_MODEL})",
        )
        return props

    def own_problems(self, ctx) -> dict[str, str]:
        text = self.param(ctx, "vocabulary")
        try:
            if text:
                unisam.Vocabulary.from_text(text)
        except ValueError as error:
            return {"vocabulary": str(error)}
        return {}

    def segment(self, ctx, image, sample, predictor):
        given = {name: self.param(ctx, name) for name in unisam.EverythingParams.names()}
        params = {name: value for name, value in given.items() if value is not None}
        text = self.param(ctx, "vocabulary")
        if text:
            found = unisam.segment_and_label(
                image, unisam.Vocabulary.from_text(text), model=predictor, label_model=self.param(ctx, "label_model"),
                **params,
            )
        else:
            found = unisam.segment_everything(image, model=predictor, **params)
        return to_detections(found)


class Track(_Segment):
    """Objects of a video followed through its frames: prompted from a frame-level Detections or
    Keypoints field (the label's ``index`` is the object id), or all objects (no prompt field)."""

    about = dict(
        name="track",
        label="unisam: track",
        description="Follow the objects prompted on some frames (or all objects) through each video, with masks",
    )
    default_field = "unisam_tracks"
    media_type = "video"
    verb = "tracked"
    write_every = 1  # a video's masks are written as soon as it is done
    progress_within = True  # unisam.track's frame steps

    def __call__(
        self,
        samples,
        prompt_field: str | None = None,
        label_field: str | None = None,
        model: str | None = None,
        output_dir: str | None = None,
        overwrite: bool = False,
        delegate: bool = False,
        **options,
    ):
        """``options``: prompted, the fields of ``unisam.TrackRules`` (e.g. ``patience=2``);
        automatic (no ``prompt_field``), those of ``unisam.EverythingParams`` (e.g. ``points_per_side=16``)."""
        mode, known = ("prompted", TRACK_OPTIONS) if prompt_field else ("automatic", unisam.EverythingParams.names())
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"option(s) {unknown} do not apply to {mode} tracking; known: {sorted(known)}")
        params = dict(
            prompt_field=prompt_field,
            label_field=label_field,
            model=model,
            output_dir=output_dir,
            overwrite=overwrite,
            **options,
        )
        return self.run_from_python(samples, params, delegate)

    def own_defaults(self) -> dict:
        # None: unisam.track's own defaults
        return {"prompt_field": None, **dict.fromkeys(TRACK_OPTIONS), **dict.fromkeys(unisam.EverythingParams.names())}

    def prompt_fields(self, ctx) -> list[str]:
        return [self.param(ctx, "prompt_field")] if self.param(ctx, "prompt_field") else []

    def options(self, ctx) -> dict:
        """The tracking options given, for ``unisam.track``: the mode's names only (the form may keep
        values set before the prompt field changed)."""
        names = TRACK_OPTIONS if self.prompt_fields(ctx) else unisam.EverythingParams.names()
        return {name: self.param(ctx, name) for name in names if self.param(ctx, name) is not None}

    def own_inputs(self, ctx, inputs):
        choices = types.DropdownView()
        for kind in (fol.Detections, fol.Keypoints):
            for name in self.schema(ctx, kind):
                choices.add_choice(name, label=f"{name} ({kind.__name__})")
        props = {
            "prompt_field": inputs.enum(
                "prompt_field",
                choices.values(),
                label="Prompt field (frames)",
                description="boxes, masks or points on one or more frames, the label's index naming the object; "
                "empty: track every object found",
                view=choices,
            )
        }
        if not self.prompt_fields(ctx):
            return {**props, **_everything_inputs(inputs, self.param(ctx, "model"))}
        rules = unisam.TrackRules()
        for name, text in TRACK_FORM_OPTIONS.items():
            add = inputs.int if isinstance(getattr(rules, name), int) else inputs.float
            props[name] = add(
                name, default=getattr(rules, name), label=name.replace("_", " ").capitalize(), description=text, min=0
            )
        return props

    def own_problems(self, ctx) -> dict[str, str]:
        found = {}
        name = self.param(ctx, "prompt_field")
        if name and name not in {**self.schema(ctx, fol.Detections), **self.schema(ctx, fol.Keypoints)}:
            found["prompt_field"] = (
                f"{name!r} is not a frame-level Detections or Keypoints field of dataset {ctx.dataset.name!r}"
            )
        return found

    def compute(self, ctx, sample, predictor, progress=None) -> dict[int, fol.Detections]:
        field = self.param(ctx, "prompt_field")
        with unisam.open_frames(sample.filepath) as frames:
            height, width = frames.size
            start, indices = None, None
            if field:
                labels = {n: frame.get_field(field) for n, frame in sample.frames.items()}
                labels = {n: label for n, label in labels.items() if label is not None}
                start, indices = keyframes_from_labels(labels, width, height, len(frames))
                if not start:
                    raise ValueError(f"the video has no {field!r} prompts on any frame")
            tracks = unisam.track(frames, start, model=predictor, progress=progress or False, **self.options(ctx))
        return {
            t: to_detections(found, indices=[i if indices is None else indices[i - 1] for i in found.ids.tolist()])
            for t, found in enumerate(tracks, 1)
        }


class LabelMasks(_Segment):
    """Class names for the masks of an existing Detections field (``unisam.label``), written into that
    field: each detection's ``label`` (kept where already set, unless 'overwrite'), ``confidence`` =
    the label's probability (the mask's own confidence moves to ``mask_confidence``), and the
    runners-up in ``label_alternatives`` / ``label_alternative_scores``."""

    about = dict(
        name="label_masks",
        label="unisam: label masks",
        description="Class names for the masks of a Detections field, from a vocabulary, the dataset's "
        "classes, or labelled samples as examples",
    )
    default_field = ""
    info_key = "unisam_label"
    verb = "labelled"
    SOURCES = {
        "vocabulary": "a vocabulary typed here (CLIP)",
        "dataset": "the dataset's classes for the field (CLIP)",
        "examples": "the labelled masks of samples with a tag (no CLIP needed)",
    }

    def __call__(
        self,
        samples,
        label_field: str,
        vocabulary: str | list[str] | None = None,
        source: str | None = None,
        examples_tag: str | None = None,
        mode: str = "ensemble",
        label_model: str | None = None,
        unknown: float = 0.0,
        model: str | None = None,
        overwrite: bool = False,
        delegate: bool = False,
    ):
        """``vocabulary``: class names (a list, or text with one class per line, synonyms after
        commas); ``source`` defaults to "vocabulary" when one is given, else "examples" with an
        ``examples_tag``, else "dataset"."""
        if isinstance(vocabulary, (list, tuple)):
            vocabulary = "\n".join(vocabulary)
        if source is None:
            source = "vocabulary" if vocabulary else "examples" if examples_tag else "dataset"
        params = dict(
            label_field=label_field, vocabulary=vocabulary, source=source, examples_tag=examples_tag, mode=mode,
            label_model=label_model, unknown=unknown, model=model, overwrite=overwrite,
        )
        return self.run_from_python(samples, params, delegate)

    def own_defaults(self) -> dict:
        return {"vocabulary": None, "source": "vocabulary", "examples_tag": None, "mode": "ensemble",
                "label_model": None, "unknown": 0.0}

    def own_inputs(self, ctx, inputs):
        sources = types.RadioGroup()
        for key, text in self.SOURCES.items():
            sources.add_choice(key, label=text)
        modes = types.RadioGroup()
        for mode in unisam.LABEL_MODES:
            modes.add_choice(mode, label=mode)
        return {
            "source": inputs.enum("source", sources.values(), default="vocabulary", label="Names from", view=sources),
            "vocabulary": inputs.str(
                "vocabulary", label="Vocabulary", description="one class per line; synonyms after commas",
                view=types.TextFieldView(multiline=True),
            ),
            "examples_tag": inputs.str(
                "examples_tag", label="Examples tag", description="samples with this tag and labelled masks"
            ),
            "mode": inputs.enum("mode", modes.values(), default="ensemble", label="Scoring", view=modes),
            "label_model": inputs.str(
                "label_model", label="CLIP model",
                description=f"open_clip 'arch/pretrained' or an exported folder (default {unisam.DEFAULT_LABEL_MODEL})",
            ),
            "unknown": inputs.float(
                "unknown", default=0.0, min=0, max=1, label="Unknown below",
                description="a mask whose best class probability is below this stays unlabelled",
            ),
        }

    def prompt_fields(self, ctx) -> list[str]:
        return [self.param(ctx, "label_field")]  # read and written: its masks are labelled in place

    def output_problems(self, ctx) -> dict[str, str]:
        field = self.param(ctx, "label_field")
        if not field or not _holds(self.schema(ctx).get(field), fol.Detections):
            return {"label_field": "choose the Detections field (with masks) whose masks to label"}
        return {}

    def own_problems(self, ctx) -> dict[str, str]:
        source = self.param(ctx, "source")
        if source not in self.SOURCES:
            return {"source": f"source must be one of {sorted(self.SOURCES)}, got {source!r}"}
        if self.param(ctx, "mode") not in unisam.LABEL_MODES:
            return {"mode": f"mode must be one of {unisam.LABEL_MODES}"}
        try:
            if source == "vocabulary":
                unisam.Vocabulary.from_text(self.param(ctx, "vocabulary") or "")
            elif source == "dataset":
                self.dataset_vocabulary(ctx)
        except ValueError as error:
            return {"vocabulary" if source == "vocabulary" else "source": str(error)}
        if source == "examples":
            tag = self.param(ctx, "examples_tag")
            if not tag or not len(ctx.dataset.match_tags(tag)):
                return {"examples_tag": f"no sample has the tag {tag!r}: tag samples whose masks are labelled"}
        return {}

    def dataset_vocabulary(self, ctx) -> unisam.Vocabulary:
        names = ctx.dataset.classes.get(self.param(ctx, "label_field")) or ctx.dataset.default_classes
        if not names:
            raise ValueError("the dataset has no classes for this field (dataset.classes or default_classes)")
        return unisam.Vocabulary.parse(list(names))

    def execute(self, ctx):
        source = self.param(ctx, "source")
        run = self._runs = getattr(self, "_runs", {})
        if not self.problems(ctx, ctx.target_view()):
            if source == "vocabulary":
                run[id(ctx)] = {"vocabulary": unisam.Vocabulary.from_text(self.param(ctx, "vocabulary"))}
            elif source == "dataset":
                run[id(ctx)] = {"vocabulary": self.dataset_vocabulary(ctx)}
            else:
                run[id(ctx)] = {"examples": self.examples(ctx)}
        try:
            yield from super().execute(ctx)
        finally:
            run.pop(id(ctx), None)

    def examples(self, ctx) -> list[tuple[str, unisam.Instances]]:
        """(image path, labelled Instances) of the tagged samples' labelled masks; an example whose
        image cannot be read is left out (logged; as a target sample it is reported with the others)."""
        field, pairs = self.param(ctx, "label_field"), []
        for sample in ctx.dataset.match_tags(self.param(ctx, "examples_tag")).select_fields(field):
            detections = [d for d in (sample[field].detections if sample[field] else []) if d.label and d.has_mask]
            if detections:
                try:
                    height, width = unisam.load_image(sample.filepath).shape[:2]
                except (ValueError, OSError) as error:
                    logger.warning("unisam: example sample %s left out: %s", sample.id, error)
                    continue
                pairs.append((sample.filepath, from_detections(detections, width, height)))
        if not pairs:
            raise ValueError(f"the samples tagged {self.param(ctx, 'examples_tag')!r} have no labelled masks in {field!r}")
        return pairs

    def compute(self, ctx, sample, predictor, progress=None):
        field = self.param(ctx, "label_field")
        detections = sample[field]
        if detections is None or not detections.detections:
            raise ValueError(f"the sample has no {field!r} detections to label")
        image = unisam.load_image(sample.filepath)
        height, width = image.shape[:2]
        labelled = unisam.label(
            image, from_detections(detections.detections, width, height), model=self.param(ctx, "label_model"),
            mode=self.param(ctx, "mode"), unknown=self.param(ctx, "unknown"), segment_model=predictor,
            **self._runs[id(ctx)],
        )
        overwrite = self.param(ctx, "overwrite")
        for det, name, score, ranked in zip(
            detections.detections, labelled.labels, labelled.label_scores, labelled.label_topk
        ):
            if not det.label or overwrite:
                set_label(det, name, score, ranked)
        return detections


class Prelabel(_Segment):
    """Segment everything into a Detections field with the resumable prelabel job
    (:func:`prelabel_dataset`): a re-run skips samples whose labels unisam made from the same image.
    With ``shards`` = K > 1, running it creates the output field and queues K delegated operations
    of itself, shard i taking the samples whose id is i mod K (:func:`shard_of`), so K
    ``fiftyone delegated launch`` workers share the job; each shard's result is its report."""

    about = dict(
        name="prelabel",
        label="unisam: prelabel",
        description="Segment everything as a resumable job, optionally split into shards for several delegated workers",
    )
    default_field = "unisam_prelabels"
    mask_files = False
    verb = "prelabelled"

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(**self.about, dynamic=True, allow_immediate_execution=True,
                                  allow_delegated_execution=True)

    def __call__(
        self,
        samples,
        label_field: str | None = None,
        model: str | None = None,
        overwrite: bool = False,
        shards: int = 1,
        delegate: bool = False,
        **everything,
    ):
        """Run on a Dataset or DatasetView. ``shards`` = 1: returns the report dict (immediate) or
        the queued operation's ``ExecutionResult`` (``delegate=True``); ``shards`` > 1: always
        queues the shards and returns ``{"queued": [their operation ids]}``."""
        unisam.EverythingParams().replace(**everything)  # unknown names or bad values raise here
        ctx = {"view": samples} if isinstance(samples, fov.DatasetView) else {"dataset": samples}
        params = dict(label_field=label_field, model=model, overwrite=overwrite, shards=shards, **everything)
        params = {name: value for name, value in params.items() if value is not None}
        result = foo.execute_operator(self.uri, ctx, params=params, request_delegation=delegate and shards == 1)
        return result if result.delegated else result.result

    def own_defaults(self) -> dict:
        return {**dict.fromkeys(unisam.EverythingParams.names()), "shards": 1, "shard": None}

    def splits(self, ctx) -> bool:
        """Whether this run queues the shards (rather than doing the work)."""
        shards = self.param(ctx, "shards")
        return type(shards) is int and shards > 1 and self.param(ctx, "shard") is None

    def own_inputs(self, ctx, inputs):
        props = _everything_inputs(inputs, self.param(ctx, "model"))
        props["shards"] = inputs.int(
            "shards", default=1, min=1, label="Shards",
            description="split the job into this many delegated operations, one per `fiftyone delegated launch` worker",
        )
        return props

    def own_problems(self, ctx) -> dict[str, str]:
        shards, shard = self.param(ctx, "shards"), self.param(ctx, "shard")
        if type(shards) is not int or shards < 1:
            return {"shards": f"shards must be a whole number >= 1, got {shards!r}"}
        if shard is not None and not (type(shard) is int and 0 <= shard < shards):
            return {"shards": f"shard must be in 0..{shards - 1}, got {shard!r}"}
        return {}

    def output_problems(self, ctx) -> dict[str, str]:
        """As the other operators', except that a field unisam prelabelled is resumed, not refused."""
        found = super().output_problems(ctx)
        field = self.param(ctx, "label_field")
        if "label_field" in found and _holds(self.schema(ctx).get(field), fol.Detections):
            try:
                DetectionsSink(ctx.target_view(), field).open({}, self.param(ctx, "overwrite"))
                found.pop("label_field")
            except ValueError as error:
                found["label_field"] = str(error)
        return found

    def resolve_delegation(self, ctx) -> bool | None:
        return False if self.splits(ctx) else None  # None: as requested

    def resolve_execution_options(self, ctx):
        if self.splits(ctx):  # queueing the shards is quick; the shards themselves are delegated
            return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=False)
        return super().resolve_execution_options(ctx)

    def execute(self, ctx) -> dict:
        """The shard's report: ``shard``, ``shards``, ``samples`` (in the shard), ``skipped``,
        ``processed``, ``instances``, ``failed`` {sample id: reason}; or ``{"queued": ids}``."""
        view = ctx.target_view()
        found = self.problems(ctx, view)
        if found:
            raise ValueError("; ".join(found.values()))
        field = self.param(ctx, "label_field")
        if self.splits(ctx):
            _declare(ctx.dataset, field)  # once, here: concurrent shards must not each add it
            queued = self.queue_shards(ctx)
            ctx.ops.notify(f"unisam: queued {len(queued)} shards; each `fiftyone delegated launch` worker runs one")
            return {"queued": queued}
        shards, shard = self.param(ctx, "shards"), self.param(ctx, "shard") or 0
        part = shard_of(view, shard, shards)
        total, written = part.count(), 0

        def progress(count: int) -> None:
            nonlocal written
            written += count
            ctx.set_progress(progress=written / total, label=f"shard {shard + 1} / {shards}: {written} samples written")

        given = {name: self.param(ctx, name) for name in unisam.EverythingParams.names()}
        report = prelabel_dataset(
            part, field, model=self.param(ctx, "model"), overwrite=self.param(ctx, "overwrite"),
            progress=False, on_write=progress if ctx.delegated else None,  # immediate runs: one message at the end
            **{name: value for name, value in given.items() if value is not None},
        )
        logger.info("unisam: %s into %r, shard %d / %d: %s", self.verb, field, shard + 1, shards, report.summary())
        if ctx.delegated:
            ctx.set_progress(progress=1.0, label=f"shard {shard + 1} / {shards}: done, {written} samples written")
        else:
            ctx.ops.notify(f"unisam: {report.processed} samples {self.verb} into {field!r}, {report.skipped} already "
                           f"done, {len(report.failures)} failed", variant="warning" if report.failures else "success")
            ctx.ops.reload_dataset()
        return {"shard": shard, "shards": shards, "samples": report.images, "skipped": report.skipped,
                "processed": report.processed, "instances": report.instances, "failed": dict(report.failures)}

    def queue_shards(self, ctx) -> list[str]:
        """Queue one delegated operation of this operator per shard (same target view and
        parameters, plus ``shard``); returns their ids."""
        service, ids = DelegatedOperationService(), []
        shards = self.param(ctx, "shards")
        for shard in range(shards):
            request = {name: value for name, value in ctx.request_params.items() if name != "run_doc"}
            request.update(delegated=True, params={**ctx.params, "shard": shard})
            op = service.queue_operation(
                operator=self.uri, context={"request_params": request}, delegation_target=ctx.delegation_target,
                label=f"{self.about['label']} (shard {shard + 1} / {shards})",
            )
            ids.append(str(op.id))
        return ids


def _everything_inputs(inputs: types.Object, model: str) -> dict:
    """The form's inputs for the common segment-everything thresholds, defaulting to ``model``'s."""
    try:
        defaults = unisam.everything_defaults(model)
    except ValueError:  # an unknown model: problems() says so on the form
        defaults = unisam.EverythingParams()
    props = {}
    for option in EVERYTHING_OPTIONS:
        add = inputs.int if option.kind is int else inputs.float
        bounds = {"min": option.minimum} | ({"max": option.maximum} if option.maximum is not None else {})
        label = option.name.replace("_", " ").replace("thresh", "threshold").capitalize()
        props[option.name] = add(
            option.name, default=getattr(defaults, option.name), label=label, description=option.help, **bounds
        )
    return props


def _report(ctx, progress: float, label: str) -> Iterator[GeneratedMessage]:
    """Show the run's progress (0..1) as its mode allows: a delegated run stores it on its operation
    (FiftyOne shows it on the run's page) and yields nothing; an immediate run yields the App's
    ``set_progress`` message, for ``execute`` to yield on."""
    if ctx.delegated:
        ctx.set_progress(progress=progress, label=label)
    else:
        yield ctx.ops.set_progress(progress=progress, label=label)


def _reporting(
    ctx, work: Callable[[Callable[[int, int], None]], T], done: int, total: int
) -> Generator[GeneratedMessage, None, T]:
    """Run ``work(progress)`` (one sample's compute) in a worker thread and :func:`_report` each of
    its ``progress(step, steps)`` calls (``unisam.track``'s frame steps: a frame visited by a forward
    or a backward sweep) as progress within sample ``done + 1`` of ``total``, as they come; returns
    ``work``'s result or raises its error. The last step (``step == steps``) is left to the caller's
    per-sample report, so the run's progress strictly increases.

    The thread is what lets an immediate run show them: its messages reach the App only when
    ``execute`` yields, and ``unisam.track`` returns only at the end. If the generator is closed
    (the App went away), the work is stopped at its next step."""
    updates: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    closed = threading.Event()

    def progress(step: int, steps: int) -> None:
        if closed.is_set():
            raise RuntimeError("unisam: the operator run was closed")
        updates.put((step, steps))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unisam-fiftyone") as pool:
        future = pool.submit(work, progress)
        future.add_done_callback(lambda _: updates.put(None))
        try:
            while (update := updates.get()) is not None:
                step, steps = update
                if step < steps:
                    label = f"sample {done + 1} / {total}: {step} / {steps} frame steps"
                    yield from _report(ctx, (done + step / steps) / total, label)
        finally:
            closed.set()  # on a normal end the work is done already
    return future.result()


def _holds(field, kind) -> bool:
    return isinstance(field, fof.EmbeddedDocumentField) and issubclass(field.document_type, kind)


def _export_masks(by_frame: dict[int | None, fol.Detections], directory: str, sample_id: str) -> None:
    """Move each mask of one sample to ``directory/<sample id>[-<frame>]-<i>.png`` (``mask_path``;
    frame None: an image), all or nothing: the files are staged beside their names, checked, then
    renamed; on an ``OSError`` none of them is left and the detections keep their masks."""
    os.makedirs(directory, exist_ok=True)
    staged, placed = [], []  # (detection, staged file, final path); final paths renamed into place
    try:
        for frame, detections in by_frame.items():
            stem = sample_id if frame is None else f"{sample_id}-{frame}"
            for i, detection in enumerate(detections.detections):
                part = os.path.join(directory, f".{stem}-{i}.partial.png")
                detection.export_mask(part)
                if not os.path.isfile(part):  # FiftyOne's writer (OpenCV) returns quietly when it fails
                    raise OSError(f"could not write the mask file {part}")
                staged.append((detection, part, os.path.join(directory, f"{stem}-{i}.png")))
        for _, part, final in staged:
            os.replace(part, final)
            placed.append(final)
    except OSError:
        for path in [part for _, part, _ in staged] + placed:
            if os.path.isfile(path):
                os.remove(path)
        raise
    for detection, _, final in staged:
        detection.mask, detection.mask_path = None, final


def _declare(dataset, path: str) -> None:
    """Add the ``Detections`` field ``path`` (``frames.<name>``: a frame field) if it is missing."""
    if not dataset.has_field(path):
        frames, name = path.startswith("frames."), path.removeprefix("frames.")
        add = dataset.add_frame_field if frames else dataset.add_sample_field
        add(name, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)


def _record(dataset, path: str, summary: dict, key: str = "unisam") -> None:
    """Store the run summary in the output field's ``info[key]`` (creating the field if no sample
    succeeded); ``path``: the field's name, ``frames.<name>`` for a frame field."""
    _declare(dataset, path)
    field = dataset.get_field(path)
    field.info = {**(field.info or {}), key: summary}
    field.save()


def register(plugin) -> None:
    plugin.register(SegmentWithPrompts)
    plugin.register(SegmentEverything)
    plugin.register(Track)
    plugin.register(LabelMasks)
    plugin.register(Prelabel)
