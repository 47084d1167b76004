"""unisam FiftyOne plugin: instance masks from prompts, or for everything, on the App's target view.

Operators ``@unisam/unisam/segment_with_prompts`` and ``@unisam/unisam/segment_everything`` write a
new ``Detections`` field (masks cropped to their boxes, or PNGs under a chosen directory). Samples
whose image cannot be read or that lack their prompts are skipped and listed in the field's
``info["unisam"]`` run summary. From Python: ``foo.get_operator(uri)(dataset_or_view, ...)``.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
import fiftyone.core.view as fov
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.executor import ExecutionOptions

import unisam

from .zoo import segment_sample, to_detections

logger = logging.getLogger("unisam.fiftyone")

WRITE_EVERY = 16  # samples computed between two database writes
SUGGEST_DELEGATION_ABOVE = 200  # samples; immediate runs stop after fo.config.operator_timeout (600 s)
EVERYTHING_OPTIONS = unisam.EverythingParams.options(common_only=True)  # the ones the form shows


class _Segment(foo.Operator):
    """What both operators share: the form, the checks, the per-sample loop with progress and
    failure reports, and writing. Subclasses add their own inputs and segment one sample."""

    about: dict = {}  # name, label, description
    default_field = ""

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

    # and ``segment(ctx, image, sample, predictor) -> fol.Detections``: the masks of one sample

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
        if view.media_type != "image":
            found["view_target"] = f"unisam segments images; the target view holds {view.media_type} samples"
        elif view.count() == 0:
            found["view_target"] = "the target view has no samples: nothing to segment"
        try:
            unisam.model_name(self.param(ctx, "model"))
        except ValueError as error:
            found["model"] = str(error)
        found.update(self.own_problems(ctx))
        field = self.param(ctx, "label_field")
        schema = ctx.dataset.get_field_schema()
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
            "label_field", default=self.default_field, label="Output field", description="a new Detections field"
        )
        props["overwrite"] = inputs.bool(
            "overwrite",
            default=False,
            label="Overwrite",
            description="replace the output field's values on the target samples if the field exists",
            view=types.CheckboxView(),
        )
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
        samples = view.select_fields(self.prompt_fields(ctx))
        failed: dict[str, str] = {}
        done = segmented = instances = 0
        for start in range(0, len(ids), WRITE_EVERY):
            results = {}
            for sample in samples.select(ids[start : start + WRITE_EVERY], ordered=True):
                try:
                    detections = self.segment(ctx, unisam.load_image(sample.filepath), sample, predictor)
                except (ValueError, OSError) as error:
                    failed[sample.id] = str(error)
                    logger.warning("unisam: skipped sample %s (%s): %s", sample.id, sample.filepath, error)
                else:
                    if mask_dir:
                        _export_masks(detections, os.path.abspath(os.path.join(mask_dir, field)), sample.id)
                    results[sample.id] = detections
                    instances += len(detections.detections)
                done += 1
                label = f"{done} / {len(ids)} samples"
                if ctx.delegated:
                    ctx.set_progress(progress=done / len(ids), label=label)
                else:
                    yield ctx.ops.set_progress(progress=done / len(ids), label=label)
            if results:
                ctx.dataset.set_values(field, results, key_field="id")
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
        _record(ctx.dataset, field, summary)
        message = f"unisam: {segmented} / {len(ids)} samples segmented into {field!r} ({instances} masks)"
        if failed:
            message += f"; {len(failed)} skipped, listed in the field's info['unisam']['failed']"
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
        return samples.get_field(params.get("label_field", self.default_field)).info["unisam"]


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
            for name in ctx.dataset.get_field_schema(embedded_doc_type=kind):
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
            if name and name not in ctx.dataset.get_field_schema(embedded_doc_type=kind):
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
    """Automatic instance masks for every sample (SAM's automatic mask generator recipe)."""

    about = dict(
        name="segment_everything",
        label="unisam: segment everything",
        description="Automatic instance masks for every sample of the target view",
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
        **everything,
    ):
        unisam.EverythingParams().replace(**everything)  # unknown names or bad values raise here
        params = dict(label_field=label_field, model=model, output_dir=output_dir, overwrite=overwrite, **everything)
        return self.run_from_python(samples, params, delegate)

    def own_defaults(self) -> dict:
        return dict.fromkeys(unisam.EverythingParams.names())  # None: the model's own default

    def own_inputs(self, ctx, inputs):
        try:
            defaults = unisam.everything_defaults(self.param(ctx, "model"))
        except ValueError:  # an unknown model: problems() says so on the form
            defaults = unisam.EverythingParams()
        props = {}
        for option in EVERYTHING_OPTIONS:
            add = inputs.int if option.kind is int else inputs.float
            bounds = {"min": 1 if option.name == "points_per_side" else 0}
            if option.kind is float:
                bounds["max"] = 1
            label = option.name.replace("_", " ").replace("thresh", "threshold").capitalize()
            props[option.name] = add(
                option.name, default=getattr(defaults, option.name), label=label, description=option.help, **bounds
            )
        return props

    def segment(self, ctx, image, sample, predictor):
        given = {name: self.param(ctx, name) for name in unisam.EverythingParams.names()}
        params = {name: value for name, value in given.items() if value is not None}
        return to_detections(unisam.segment_everything(image, model=predictor, **params))


def _holds(field, kind) -> bool:
    return isinstance(field, fof.EmbeddedDocumentField) and issubclass(field.document_type, kind)


def _export_masks(detections: fol.Detections, directory: str, sample_id: str) -> None:
    """Move each mask to ``directory/<sample id>-<i>.png`` (``mask_path``)."""
    os.makedirs(directory, exist_ok=True)
    for i, detection in enumerate(detections.detections):
        detection.export_mask(os.path.join(directory, f"{sample_id}-{i}.png"), update=True)


def _record(dataset, field_name: str, summary: dict) -> None:
    """Store the run summary in the output field's ``info["unisam"]`` (creating the field if no
    sample succeeded)."""
    if not dataset.has_field(field_name):
        dataset.add_sample_field(field_name, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
    field = dataset.get_field(field_name)
    field.info = {**(field.info or {}), "unisam": summary}
    field.save()


def register(plugin) -> None:
    plugin.register(SegmentWithPrompts)
    plugin.register(SegmentEverything)
