"""The unisam FiftyOne track operator, run by a real FiftyOne (bundled MongoDB) on a real video dataset:
an H.264 file of a synthetic tracking scene with frame-level prompts.

Oracle: ``unisam.track`` called here on the same file with prompts built from the scene's ground-truth
masks (not from FiftyOne labels), plus the ground truth itself.
"""

import asyncio
import re
import threading

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError, execute_or_delegate_operator, resolve_type
from fo_scenes import (
    SIZE,
    VIDEO_FRAMES,
    centre,
    iou,
    pixel_box,
    stored_mask,
    tracking_scene,
    truth_by_id,
    write_video,
)

import unisam

TRACK = "@unisam/unisam/track"
INDEX = {1: 0, 2: 7}  # the FiftyOne index given to each truth object: 0 is a valid FiftyOne index
MIN_IOU = 0.5  # measured on this scene: the lowest IoU of a tracked mask is 0.58 (boxes), 0.74 (clicks)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The scene's video file and its truth per frame {id: mask}."""
    scene = tracking_scene()
    path = write_video(tmp_path_factory.mktemp("videos") / "nuclei.mp4", scene.frames)
    return str(path), truth_by_id(scene.truth)


def relative_box(mask: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = pixel_box(mask)
    return [x1 / SIZE, y1 / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE]


def drawn(mask: np.ndarray, object_id: int) -> fo.Detection:
    """A detection with the object's exact mask, cropped to its box."""
    x, y, w, h = (round(v * SIZE) for v in relative_box(mask))
    crop = mask[y : y + h, x : x + w]
    return fo.Detection(label=f"cell{object_id}", bounding_box=relative_box(mask), mask=crop, index=INDEX[object_id])


@pytest.fixture
def videos(video):
    """A video dataset of one sample (metadata set by hand: no ffprobe here) with frame-level prompts
    on frame 1: ``gt`` boxes (index 0 and 7, labels ``cell1``/``cell2``), ``kp`` clicks at the
    centres (no index), ``drawn`` the exact masks on frames 1 and 5."""
    path, truth = video
    ds = fo.Dataset()
    metadata = fo.VideoMetadata(frame_width=SIZE, frame_height=SIZE, total_frame_count=VIDEO_FRAMES, frame_rate=10)
    sample = fo.Sample(filepath=path, metadata=metadata)
    first = truth[0]
    sample.frames[1]["gt"] = fo.Detections(
        detections=[
            fo.Detection(label=f"cell{i}", bounding_box=relative_box(m), index=INDEX[i]) for i, m in first.items()
        ]
    )
    sample.frames[1]["kp"] = fo.Keypoints(
        keypoints=[fo.Keypoint(label=f"click{i}", points=[[c / SIZE for c in centre(m)]]) for i, m in first.items()]
    )
    for number in (1, 5):
        sample.frames[number]["drawn"] = fo.Detections(detections=[drawn(m, i) for i, m in truth[number - 1].items()])
    ds.add_sample(sample)
    yield ds
    ds.delete()


def prompts(dataset, field: str) -> dict[int, object]:
    """{frame number: value} of a frame field on the frames where it is set (first sample)."""
    numbers, values = dataset.values("frames.frame_number")[0], dataset.values(f"frames.{field}")[0]
    return {n: v for n, v in zip(numbers, values) if v is not None}


def frames_of(dataset, field: str, sample=0) -> list[fo.Detections]:
    """The output field on every frame of one sample, frame 1 first."""
    return dataset.values(f"frames.{field}")[sample]


def by_index(detections: fo.Detections) -> dict[int, fo.Detection]:
    return {d.index: d for d in detections.detections}


def oracle(path: str, truth, **options) -> unisam.Tracks:
    """unisam.track on the file with the truth's boxes on frame 0 (object i -> id i)."""
    prompts = {i: unisam.Prompt(box=np.array(pixel_box(m), float), label=f"cell{i}") for i, m in truth[0].items()}
    return unisam.track(path, prompts, **options)


def assert_matches_tracks(stored: list[fo.Detections], tracks: unisam.Tracks, index: dict[int, int] | None) -> None:
    """Every frame holds exactly the core's masks, with ``index`` = ``index[track id]`` (None: the id)."""
    assert len(stored) == len(tracks) == VIDEO_FRAMES
    for detections, found in zip(stored, tracks):
        named = index or {i: i for i in found.ids.tolist()}
        mine = by_index(detections)
        assert sorted(mine) == sorted(named[i] for i in found.ids.tolist())
        for i, mask, score in zip(found.ids.tolist(), found.masks, found.scores.tolist()):
            np.testing.assert_array_equal(stored_mask(mine[named[i]]), mask)
            assert abs(mine[named[i]].confidence - score) < 1e-6


def assert_follows_truth(stored: list[fo.Detections], truth, index: dict[int, int], labels: dict[int, str]) -> None:
    """Each truth object is on every frame under one constant index, with its label, on its pixels."""
    for t, (detections, objects) in enumerate(zip(stored, truth)):
        mine = by_index(detections)
        assert sorted(mine) == sorted(index.values()), t
        for object_id, mask in objects.items():
            detection = mine[index[object_id]]
            assert detection.label == labels[object_id]
            assert iou(stored_mask(detection), mask) > MIN_IOU, (t, object_id)


def test_track_is_registered_delegable_and_its_form_lists_frame_fields(videos):
    assert TRACK in {op.uri for op in foo.list_operators()}
    config = foo.get_operator(TRACK).config
    assert config.execute_as_generator and config.allow_delegated_execution and config.dynamic
    request = {"dataset_name": videos.name, "params": {"prompt_field": "gt"}}
    props = asyncio.run(resolve_type(foo.OperatorRegistry(), TRACK, request)).type.properties
    assert props["prompt_field"].type.values == ["gt", "drawn", "kp"]  # Detections, then Keypoints
    assert props["patience"].default == unisam.TrackRules().patience and "points_per_side" not in props
    assert not any(p.invalid for p in props.values())
    automatic = asyncio.run(resolve_type(foo.OperatorRegistry(), TRACK, {**request, "params": {}})).type.properties
    assert "points_per_side" in automatic and "patience" not in automatic


def test_box_prompts_on_frame_one_are_tracked_through_the_video(videos, video):
    path, truth = video
    before = {f: prompts(videos, f) for f in ("gt", "kp", "drawn")}
    summary = foo.get_operator(TRACK)(videos, prompt_field="gt", label_field="tracks")
    assert (summary["samples"], summary["segmented"], summary["failed"]) == (1, 1, {})
    assert summary["instances"] == 2 * VIDEO_FRAMES and summary["params"]["prompt_field"] == "gt"
    assert videos.get_field("frames.tracks").info["unisam"] == summary
    stored = frames_of(videos, "tracks")
    assert_follows_truth(stored, truth, INDEX, {1: "cell1", 2: "cell2"})
    assert_matches_tracks(stored, oracle(path, truth), INDEX)
    assert {f: prompts(videos, f) for f in ("gt", "kp", "drawn")} == before  # prompts untouched
    assert "tracks" not in videos.get_field_schema()  # a frame field only
    # the target view's label filters select the prompts: only object 2 (index 7) is tracked
    only = videos.filter_labels("frames.gt", fo.ViewField("label") == "cell2")
    foo.get_operator(TRACK)(only, prompt_field="gt", label_field="one")
    assert [[d.index for d in f.detections] for f in frames_of(videos, "one")] == [[7]] * VIDEO_FRAMES


def test_keypoints_are_objects_in_their_order_and_masks_are_kept_on_keyframes(videos, video):
    path, truth = video
    op = foo.get_operator(TRACK)
    op(videos, prompt_field="kp", label_field="clicks")
    assert_follows_truth(frames_of(videos, "clicks"), truth, {1: 1, 2: 2}, {1: "click1", 2: "click2"})
    clicks = {i: unisam.Prompt(points=[centre(m)], label=f"click{i}") for i, m in truth[0].items()}
    assert_matches_tracks(frames_of(videos, "clicks"), unisam.track(path, clicks), {1: 1, 2: 2})
    # masks on frames 1 and 5 (a correction): those frames hold exactly the given masks
    op(videos, prompt_field="drawn", label_field="from_masks")
    stored = frames_of(videos, "from_masks")
    assert_follows_truth(stored, truth, INDEX, {1: "cell1", 2: "cell2"})
    for t in (0, 4):
        for object_id, mask in truth[t].items():
            np.testing.assert_array_equal(stored_mask(by_index(stored[t])[INDEX[object_id]]), mask)


def test_masks_written_as_png_files_per_frame(videos, video, tmp_path):
    path, truth = video
    foo.get_operator(TRACK)(videos, prompt_field="gt", label_field="files", output_dir=str(tmp_path))
    stored = frames_of(videos, "files")
    paths = [d.mask_path for detections in stored for d in detections.detections]
    assert len(set(paths)) == 2 * VIDEO_FRAMES and all(p.startswith(str(tmp_path / "files")) for p in paths)
    assert all(d.mask is None for detections in stored for d in detections.detections)
    assert_matches_tracks(stored, oracle(path, truth), INDEX)


def test_app_run_streams_progress_per_frame_and_delegated_run_gives_the_same(videos, video):
    path, truth = video
    second = fo.Sample(filepath=path)
    second.frames[1]["gt"] = videos.first().frames[1]["gt"].copy()
    videos.add_sample(second)
    request = {"dataset_name": videos.name, "params": {"prompt_field": "gt", "label_field": "now"}}
    result = asyncio.run(execute_or_delegate_operator(TRACK, request))
    assert result.is_generator and result.error is None
    messages = [(m.body.operator_uri, m.body.params) for m in result.result]
    updates = [p for name, p in messages if name == "set_progress"]
    progress = [p["progress"] for p in updates]
    assert all(a < b for a, b in zip(progress, progress[1:])) and progress[-1] == 1.0
    for sample in (1, 2):  # each frame step but a video's last, which its "k / 2 samples" update reports
        steps = [(re.fullmatch(rf"sample {sample} / 2: (\d+) / (\d+) frame steps", p["label"]), p) for p in updates]
        within = [(int(m[1]), int(m[2]), p["progress"]) for m, p in steps if m]
        assert len(within) + 1 >= VIDEO_FRAMES  # at least one update per frame
        assert [step for step, _, _ in within] == list(range(1, len(within) + 1))
        for step, total, value in within:
            assert abs(value - (sample - 1 + step / total) / 2) < 1e-12
    assert [p["label"] for p in updates if "frame steps" not in p["label"]] == ["1 / 2 samples", "2 / 2 samples"]
    assert messages[-2] == (
        "notify",
        {"message": f"unisam: 2 / 2 samples tracked into 'now' ({4 * VIDEO_FRAMES} masks)", "variant": "success"},
    )
    queued = foo.get_operator(TRACK)(videos, prompt_field="gt", label_field="later", delegate=True)
    assert queued.delegated and not videos.has_field("frames.later")
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=videos.name)
    done = service.get(queued.result["id"])
    assert done.run_state == "completed", done.result
    assert done.status.progress == 1.0
    videos.reload()
    tracks = oracle(path, truth)
    for sample in (0, 1):
        assert_matches_tracks(frames_of(videos, "now", sample), tracks, INDEX)
        assert_matches_tracks(frames_of(videos, "later", sample), tracks, INDEX)


def test_closing_an_app_run_stops_its_tracking_thread_and_writes_nothing(videos):
    request = {"dataset_name": videos.name, "params": {"prompt_field": "gt", "label_field": "closed"}}
    run = asyncio.run(execute_or_delegate_operator(TRACK, request)).result
    first = next(run)
    assert first.body.operator_uri == "set_progress" and "frame steps" in first.body.params["label"]
    assert any(t.name.startswith("unisam-fiftyone") for t in threading.enumerate())  # still tracking: streamed
    run.close()  # the App went away mid-video
    assert not any(t.name.startswith("unisam-fiftyone") for t in threading.enumerate())
    assert not videos.has_field("frames.closed")


def test_automatic_mode_tracks_every_object(videos, video):
    path, truth = video
    summary = foo.get_operator(TRACK)(videos, label_field="auto", points_per_side=8)
    assert summary["failed"] == {} and summary["params"]["points_per_side"] == 8
    stored = frames_of(videos, "auto")
    assert_matches_tracks(stored, unisam.track(path, points_per_side=8), None)
    for object_id in (1, 2):  # each nucleus is one track: one index on every frame
        found = set()
        for detections, objects in zip(stored, truth):
            best = max(detections.detections, key=lambda d: iou(stored_mask(d), objects[object_id]))
            assert iou(stored_mask(best), objects[object_id]) > MIN_IOU
            found.add(best.index)
        assert len(found) == 1, (object_id, found)


def test_existing_fields_are_not_overwritten_unless_asked(videos, video):
    path, truth = video
    op = foo.get_operator(TRACK)
    op(videos, prompt_field="kp", label_field="out")
    before = frames_of(videos, "out")
    with pytest.raises(ExecutionError, match="'out' already exists: tick 'overwrite'"):
        op(videos, prompt_field="gt", label_field="out")
    with pytest.raises(ExecutionError, match="must not be a prompt field"):
        op(videos, prompt_field="gt", label_field="gt", overwrite=True)
    assert frames_of(videos, "out") == before
    op(videos, prompt_field="gt", label_field="out", overwrite=True)
    assert_matches_tracks(frames_of(videos, "out"), oracle(path, truth), INDEX)


def test_bad_input_is_refused_or_skipped_with_clear_messages(videos, video, dataset, tmp_path):
    path, truth = video
    op = foo.get_operator(TRACK)
    with pytest.raises(ExecutionError, match="works on video samples; the target view holds image samples"):
        op(dataset, prompt_field="gt")  # the image dataset of the other tests
    with pytest.raises(ExecutionError, match="'nope' is not a frame-level Detections or Keypoints field"):
        op(videos, prompt_field="nope")
    with pytest.raises(ValueError, match=r"\['points_per_side'\] do not apply to prompted tracking"):
        op(videos, prompt_field="gt", points_per_side=8)
    with pytest.raises(ValueError, match=r"\['patiense'\] do not apply to prompted tracking; known: \['edge"):
        op(videos, prompt_field="gt", patiense=3)
    with pytest.raises(ValueError, match=r"\['patience'\] do not apply to automatic tracking"):
        op(videos, patience=3)
    assert not videos.has_field("frames.unisam_tracks")
    beyond = fo.Sample(filepath=path)
    beyond.frames[12]["gt"] = videos.first().frames[1]["gt"].copy()
    twice = fo.Sample(filepath=path)
    twice.frames[1]["gt"] = fo.Detections(detections=[fo.Detection(bounding_box=[0.1, 0.1, 0.2, 0.2], index=3)] * 2)
    missing = fo.Sample(filepath=str(tmp_path / "missing.mp4"))
    missing.frames[1]["gt"] = videos.first().frames[1]["gt"].copy()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    broken = fo.Sample(filepath=str(corrupt))
    broken.frames[1]["gt"] = videos.first().frames[1]["gt"].copy()
    ids = videos.add_samples([beyond, twice, missing, broken, fo.Sample(filepath=path)])
    summary = op(videos, prompt_field="gt", label_field="tracks")
    assert (summary["samples"], summary["segmented"]) == (6, 1) and sorted(summary["failed"]) == sorted(ids)
    reasons = [summary["failed"][i] for i in ids]
    assert "prompts on frame(s) [12], beyond the video's 8 frames (1..8)" in reasons[0]
    assert "object index [3] is given twice" in reasons[1]
    assert "not found" in reasons[2] and "cannot read video" in reasons[3]
    assert "the video has no 'gt' prompts on any frame" in reasons[4]
    values = dict(zip(videos.values("id"), videos.values("frames.tracks")))
    assert all(v is None for i in ids for v in values[i])  # skipped samples got nothing
    assert_matches_tracks(values[videos.first().id], oracle(path, truth), INDEX)
