"""The unisam FiftyOne plugin, run by a real FiftyOne (bundled MongoDB) on synthetic scenes.

Oracle: ``unisam.segment`` / ``unisam.segment_everything`` called here on the same files with prompts
built from the ground-truth masks (not from FiftyOne labels), plus the masks' ground truth.
"""

import asyncio
import json
import os

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import (
    ExecutionError,
    execute_or_delegate_operator,
    resolve_execution_options,
    resolve_type,
)
from fo_scenes import assert_matches_core, box_prompts, iou, point_prompts, stored_mask

import unisam

PROMPTS = "@unisam/unisam/segment_with_prompts"
EVERYTHING = "@unisam/unisam/segment_everything"
# thresholds under which the small bundled model finds the disks (SAM's defaults suit official weights)
EVERYTHING_PARAMS = dict(points_per_side=8, pred_iou_thresh=0.6, stability_score_thresh=0.7)


def by_path(dataset, field):
    return dict(zip(dataset.values("filepath"), dataset.values(field)))


def test_only_the_plugin_is_discovered_with_its_operators():
    assert [p.name for p in fop.list_plugins()] == ["@unisam/unisam"]
    uris = {op.uri for op in foo.list_operators()}
    assert {PROMPTS, EVERYTHING} <= uris
    for uri in (PROMPTS, EVERYTHING):
        config = foo.get_operator(uri).config
        assert config.execute_as_generator and config.allow_delegated_execution


def test_app_form_lists_schema_fields_and_flags_problems(dataset):
    request = {"dataset_name": dataset.name, "params": {"label_field": "gt"}}
    form = asyncio.run(resolve_type(foo.OperatorRegistry(), PROMPTS, request))
    props = form.type.properties
    assert list(props)[0] == "view_target"
    assert props["box_field"].type.values == ["gt"] and props["point_field"].type.values == ["kp"]
    assert props["model"].type.values == unisam.list_models()
    assert props["box_field"].invalid and "choose a Detections field" in props["box_field"].error_message
    assert props["label_field"].invalid and "'gt' already exists" in props["label_field"].error_message
    json.dumps(form.to_json())  # what the App receives
    options = asyncio.run(resolve_execution_options(foo.OperatorRegistry(), PROMPTS, request))
    assert options.allow_immediate_execution and options.allow_delegated_execution
    assert not options.default_choice_to_delegated  # proposed only for large views
    everything = asyncio.run(resolve_type(foo.OperatorRegistry(), EVERYTHING, request)).type.properties
    for name in ("pred_iou_thresh", "stability_score_thresh", "points_per_side"):
        assert everything[name].default == getattr(unisam.everything_defaults(unisam.default_model()), name)


def test_app_run_streams_progress_then_notifies(dataset):
    """An immediate run as the App server makes it: the generator's messages are streamed."""
    request = {"dataset_name": dataset.name, "params": {"box_field": "gt", "label_field": "masks"}}
    result = asyncio.run(execute_or_delegate_operator(PROMPTS, request))
    assert result.is_generator and result.error is None
    messages = [(m.body.operator_uri, m.body.params) for m in result.result]
    assert [p["progress"] for name, p in messages if name == "set_progress"] == [1 / 3, 2 / 3, 1.0]
    assert messages[-2] == (
        "notify",
        {"message": "unisam: 3 / 3 samples segmented into 'masks' (9 masks)", "variant": "success"},
    )
    assert messages[-1][0] == "reload_dataset"
    assert len(dataset.values("masks.detections", unwind=True)) == 9


def test_box_prompts_give_the_cores_masks(dataset, scenes):
    summary = foo.get_operator(PROMPTS)(dataset, box_field="gt", label_field="masks")
    assert (summary["samples"], summary["segmented"], summary["failed"]) == (3, 3, {})
    stored = by_path(dataset, "masks")
    for path, masks in scenes:
        prompts = box_prompts(masks)
        assert_matches_core(stored[path], unisam.segment(path, prompts), [p.label for p in prompts])
        for detection, truth in zip(stored[path].detections, masks):
            assert iou(stored_mask(detection), truth) > 0.5
    gt_ids = {d.id for d in dataset.values("gt.detections", unwind=True)}
    assert {d.prompt_id for d in dataset.values("masks.detections", unwind=True)} == gt_ids
    assert dataset.get_field("masks").info["unisam"]["instances"] == 9
    # the target view's label filters select the prompts
    foo.get_operator(PROMPTS)(dataset.filter_labels("gt", fo.ViewField("label") == "obj1"), box_field="gt")
    assert dataset.values("unisam_masks.detections.label") == [["obj1"]] * 3


def test_keypoints_with_polarity_and_paired_prompts(dataset, scenes):
    runs = unisam.get_model(unisam.default_model()).encoder_runs
    op = foo.get_operator(PROMPTS)
    op(dataset, point_field="kp", label_field="clicks")
    op(dataset, box_field="gt", point_field="kp", label_field="both")
    assert unisam.get_model(unisam.default_model()).encoder_runs - runs <= len(scenes)  # one encoding per image
    clicks, both = by_path(dataset, "clicks"), by_path(dataset, "both")
    for path, masks in scenes:
        points = point_prompts(masks)
        assert_matches_core(clicks[path], unisam.segment(path, points), [p.label for p in points])
        paired = [
            unisam.Prompt(points=p.points, point_labels=p.point_labels, box=b.box, label=b.label)
            for p, b in zip(points, box_prompts(masks))
        ]
        assert_matches_core(both[path], unisam.segment(path, paired), [p.label for p in paired])


def test_masks_written_as_png_files(dataset, scenes, tmp_path):
    foo.get_operator(PROMPTS)(dataset, box_field="gt", label_field="files", output_dir=str(tmp_path))
    stored = by_path(dataset, "files")
    for path, masks in scenes:
        for detection in stored[path].detections:
            assert detection.mask is None and detection.mask_path.startswith(str(tmp_path))
            assert os.path.isfile(detection.mask_path)
        prompts = box_prompts(masks)
        assert_matches_core(stored[path], unisam.segment(path, prompts), [p.label for p in prompts])


def test_segment_everything_gives_the_cores_instances(dataset, scenes):
    summary = foo.get_operator(EVERYTHING)(dataset, label_field="auto", **EVERYTHING_PARAMS)
    assert summary["segmented"] == 3 and summary["params"]["points_per_side"] == 8
    stored = by_path(dataset, "auto")
    for path, masks in scenes:
        result = unisam.segment_everything(path, **EVERYTHING_PARAMS)
        assert len(result) >= 1
        assert_matches_core(stored[path], result, [None] * len(result))


def test_segment_everything_in_watershed_mode_gives_the_cores_instances(dataset, scenes):
    params = {"object_size": 30, "watershed_seed_thresh": 0.3}  # the instance head instead of the grid
    summary = foo.get_operator(EVERYTHING)(dataset, label_field="watershed", **params)
    assert summary["segmented"] == 3 and summary["params"]["watershed_seed_thresh"] == 0.3
    stored = by_path(dataset, "watershed")
    for path, masks in scenes:
        result = unisam.segment_everything(path, **params)
        assert len(result) >= 1 and result.masks.sum(0).max() == 1  # a partition: the watershed's
        assert_matches_core(stored[path], result, [None] * len(result))


def test_delegated_runs_are_queued_then_executed_by_the_service(dataset, scenes):
    queued = [
        foo.execute_operator(
            PROMPTS, dict(dataset=dataset), params=dict(box_field="gt", label_field="late"), request_delegation=True
        ),
        foo.get_operator(EVERYTHING)(dataset, label_field="late_auto", delegate=True, **EVERYTHING_PARAMS),
    ]
    assert all(r.delegated and r.result["run_state"] == "queued" for r in queued)
    assert not dataset.has_field("late") and not dataset.has_field("late_auto")
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name)
    for r in queued:
        done = service.get(r.result["id"])
        assert done.run_state == "completed", done.result
        assert done.status.progress == 1.0
    dataset.reload()
    late, late_auto = by_path(dataset, "late"), by_path(dataset, "late_auto")
    for path, masks in scenes:
        prompts = box_prompts(masks)
        assert_matches_core(late[path], unisam.segment(path, prompts), [p.label for p in prompts])
        result = unisam.segment_everything(path, **EVERYTHING_PARAMS)
        assert_matches_core(late_auto[path], result, [None] * len(result))


def test_existing_fields_are_not_overwritten_unless_asked(dataset, scenes):
    op = foo.get_operator(PROMPTS)
    op(dataset, box_field="gt", label_field="out")
    before = by_path(dataset, "out")
    with pytest.raises(ExecutionError, match="'out' already exists: tick 'overwrite'"):
        op(dataset, point_field="kp", label_field="out")
    with pytest.raises(ExecutionError, match="does not hold Detections"):
        op(dataset, box_field="gt", label_field="filepath", overwrite=True)
    with pytest.raises(ExecutionError, match="must not be a prompt field"):
        op(dataset, box_field="gt", label_field="gt", overwrite=True)
    assert by_path(dataset, "out") == before
    # a delegated run is checked again when it executes: the field appeared after it was queued
    queued = op(dataset, box_field="gt", label_field="race", delegate=True)
    op(dataset, point_field="kp", label_field="race")
    race = by_path(dataset, "race")
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name)
    failed = service.get(queued.result["id"])
    assert failed.run_state == "failed" and "'race' already exists" in failed.result.error
    assert by_path(dataset, "race") == race
    # with overwrite, the target samples get new values
    op(dataset.limit(2), point_field="kp", label_field="out", overwrite=True)
    after = by_path(dataset, "out")
    for k, (path, masks) in enumerate(scenes):
        points = point_prompts(masks)
        if k < 2:
            assert_matches_core(after[path], unisam.segment(path, points), [p.label for p in points])
        else:
            assert after[path] == before[path]


def test_bad_samples_are_reported_and_skipped(dataset, scenes, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ids = dataset.add_samples(
        [
            fo.Sample(filepath=str(corrupt), gt=dataset.first().gt.copy()),
            fo.Sample(filepath=str(tmp_path / "missing.png"), gt=dataset.first().gt.copy()),
            fo.Sample(filepath=scenes[0][0]),  # no prompts
        ]
    )
    gt_before = dataset.values("gt")
    summary = foo.get_operator(PROMPTS)(dataset, box_field="gt", label_field="masks")
    assert summary["samples"] == 6 and summary["segmented"] == 3
    assert sorted(summary["failed"]) == sorted(ids)
    assert "no 'gt' prompts" in summary["failed"][ids[2]]
    values = dict(zip(dataset.values("id"), dataset.values("masks")))
    assert all(values[i] is None for i in ids)
    assert sum(len(v.detections) for v in values.values() if v is not None) == 9
    assert dataset.values("gt") == gt_before
    # a failing sample keeps what an earlier run stored there
    corrupt.write_bytes(open(scenes[0][0], "rb").read())
    foo.get_operator(PROMPTS)(dataset.select(ids[0]), box_field="gt", label_field="masks", overwrite=True)
    kept = dataset[ids[0]].masks
    corrupt.write_bytes(b"broken again")
    summary = foo.get_operator(PROMPTS)(dataset, point_field="kp", label_field="masks", overwrite=True)
    assert ids[0] in summary["failed"] and dataset[ids[0]].masks == kept


def test_empty_view_and_missing_fields_are_refused(dataset):
    op = foo.get_operator(PROMPTS)
    with pytest.raises(ExecutionError, match="the target view has no samples"):
        op(dataset.match(fo.ViewField("filepath") == "nowhere"), box_field="gt")
    with pytest.raises(ExecutionError, match="'boxes' is not a Detections field"):
        op(dataset, box_field="boxes")
    with pytest.raises(ExecutionError, match="'gt' is not a Keypoints field"):
        op(dataset, point_field="gt")
    with pytest.raises(ExecutionError, match="choose a Detections field"):
        op(dataset)
    with pytest.raises(ExecutionError, match="unknown model 'nope'"):
        foo.get_operator(EVERYTHING)(dataset, model="nope")
    assert not dataset.has_field("unisam_masks") and not dataset.has_field("unisam_everything")
