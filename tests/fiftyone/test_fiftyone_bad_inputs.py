"""The core's bad-input corpus (tests/core/bad_inputs.py, issue #19) through the FiftyOne operators, in a
real FiftyOne: samples point at the corpus's unreadable files (truncated PNG/JPEG/TIFF, empty, text named
.png, decompression-bomb headers, NaN TIFFs, ...) beside odd but valid images (RGBA, palette, 16-bit,
EXIF-rotated, 1 x 1) and good ones. Each bad sample is skipped with the core's one-line reason in the run
summary and gets no label (nor mask file); every other sample gets exactly the core's masks.

Also here: boxes overhanging the image are cut to it, operators never replace an existing field unless
asked, and a delegated track run reports its progress frame by frame."""

import re
import sys
import threading
import time
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError
from fo_scenes import SIZE, VIDEO_FRAMES, pixel_box, tracking_scene, write_video
from PIL import Image

import unisam

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
try:
    import bad_inputs
finally:
    sys.path.pop(0)

PROMPTS = "@unisam/unisam/segment_with_prompts"
EVERYTHING = "@unisam/unisam/segment_everything"
LABEL = "@unisam/unisam/label_masks"
TRACK = "@unisam/unisam/track"
EVERYTHING_PARAMS = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
BOX = [0.25, 0.2, 0.5, 0.6]  # relative x, y, w, h: inside every image
FILES = bad_inputs.IMAGE_FILES


def _odd_but_valid(folder: Path) -> dict[str, Path]:
    """RGBA, palette, 16-bit grey, EXIF-rotated and 1 x 1 image files (the core defines their results)."""
    rgb = bad_inputs.good_image()
    alpha = np.random.default_rng(2).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    files = {
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha])),
        "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4),
        "gray16.png": Image.fromarray((rgb[..., 0].astype(np.uint16) * 200 + 1000).astype(np.uint16)),
        "one-pixel.png": Image.fromarray(np.full((1, 1, 3), 200, np.uint8)),
        "good.png": Image.fromarray(rgb),
    }
    paths = {}
    for name, image in files.items():
        image.save(folder / name)
        paths[name] = folder / name
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: "rotate 90 clockwise to display"
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(folder / "exif.jpg", exif=exif, quality=95)
    paths["exif.jpg"] = folder / "exif.jpg"
    return paths


@pytest.fixture
def corpus(tmp_path):
    """A dataset of one sample per corpus file and per odd-but-valid image, each with one box in ``gt``;
    returns (dataset, {sample id: corpus entry} for the bad ones, {sample id: path} for the good ones)."""
    made = {}
    for entry in FILES:  # a folder each: no two entries share a file name
        (tmp_path / entry.name).mkdir()
        made[entry.name] = entry.make(tmp_path / entry.name)
    good = _odd_but_valid(tmp_path)
    ds = fo.Dataset()
    box = fo.Detections(detections=[fo.Detection(label="thing", bounding_box=BOX)])
    paths = [*made.values(), *good.values()]
    ids = ds.add_samples([fo.Sample(filepath=str(path), gt=box.copy()) for path in paths])
    bad = dict(zip(ids, FILES))
    yield ds, bad, dict(zip(ids[len(FILES) :], good.values()))
    ds.delete()


def full_masks(detections: fo.Detections, path: Path) -> np.ndarray:
    """(N, H, W) bool: the stored masks pasted into the image as the core loads it; each mask spans its box."""
    height, width = unisam.load_image(path).shape[:2]
    out = np.zeros((len(detections.detections), height, width), bool)
    for full, detection in zip(out, detections.detections):
        x, y, w, h = (round(v * size) for v, size in zip(detection.bounding_box, (width, height) * 2))
        crop = detection.get_mask()
        assert crop.shape == (h, w)
        full[y : y + h, x : x + w] = crop
    return out


def assert_reasons(summary: dict, bad: dict) -> None:
    """Exactly the bad samples failed, each with the core's one-line message for its file."""
    assert sorted(summary["failed"]) == sorted(bad)
    for sample_id, entry in bad.items():
        reason = summary["failed"][sample_id]
        assert "\n" not in reason and re.search(entry.error, reason), (entry.name, reason)


def test_the_corpus_covers_the_file_kinds():
    names = {entry.name for entry in FILES}
    assert len(FILES) >= 18
    for kind in ("truncated-png", "truncated-jpeg", "truncated-tiff", "empty-file", "text-named-png",
                 "claims-100000", "claims-20000", "nan", "missing-file"):
        assert any(kind in name for name in names), kind


def test_prompted_run_skips_each_bad_file_with_its_reason_and_writes_nothing_for_it(corpus, tmp_path):
    ds, bad, good = corpus
    summary = foo.get_operator(PROMPTS)(ds, box_field="gt", label_field="masks", output_dir=str(tmp_path / "png"))
    assert (summary["samples"], summary["segmented"]) == (len(bad) + len(good), len(good))
    assert_reasons(summary, bad)
    values = dict(zip(ds.values("id"), ds.values("masks")))
    assert all(values[i] is None for i in bad)  # no label, not even an empty one
    written = {p.name.split("-")[0] for p in (tmp_path / "png" / "masks").glob("*.png")}
    assert written and not written & set(bad)  # and no mask file
    for sample_id, path in good.items():
        height, width = unisam.load_image(path).shape[:2]
        x, y, w, h = BOX
        box = [x * width, y * height, (x + w) * width, (y + h) * height]
        expected = unisam.segment(path, box=box).masks
        np.testing.assert_array_equal(full_masks(values[sample_id], path), expected[expected.any(axis=(1, 2))])
    assert ds.get_field("masks").info["unisam"]["failed"] == summary["failed"]


def test_segment_everything_and_label_masks_skip_bad_files_too(corpus):
    ds, bad, good = corpus
    summary = foo.get_operator(EVERYTHING)(ds, label_field="auto", **EVERYTHING_PARAMS)
    assert summary["segmented"] == len(good)
    assert_reasons(summary, bad)
    values = dict(zip(ds.values("id"), ds.values("auto")))
    assert all(values[i] is None for i in bad)
    for sample_id, path in good.items():
        expected = unisam.segment_everything(path, **EVERYTHING_PARAMS).masks
        np.testing.assert_array_equal(full_masks(values[sample_id], path), expected[expected.any(axis=(1, 2))])
    # label masks by example: masks on every sample (the bad ones too), two good samples as examples
    mask = fo.Detection(label=None, bounding_box=BOX, mask=np.ones((4, 4), bool))
    ds.set_values("masks", [fo.Detections(detections=[mask.copy()]) for _ in range(len(ds))])
    examples = list(good)[-2:]  # good.png and exif.jpg
    for sample_id, name in zip(examples, ("a", "b")):
        sample = ds[sample_id]
        sample.masks.detections[0].label = name
        sample.tags.append("examples")
        sample.save()
    first_bad = next(iter(bad))  # an unreadable example is left out, not the run's end
    broken = ds[first_bad]
    broken.masks.detections[0].label = "a"
    broken.tags.append("examples")
    broken.save()
    summary = foo.get_operator(LABEL)(ds, label_field="masks", examples_tag="examples")
    assert_reasons(summary, bad)
    assert summary["segmented"] == len(good)
    labels = dict(zip(ds.values("id"), ds.values("masks.detections.label")))
    assert all(labels[i] == [None] for i in bad if i != first_bad)  # left as they were
    for sample_id, path in good.items():  # the 1 x 1 image's mask (half a pixel wide) holds no pixel: no name
        assert labels[sample_id][0] in ((None,) if path.name == "one-pixel.png" else ("a", "b")), (path, labels)


def test_a_sample_whose_mask_files_cannot_all_be_written_gets_no_label_and_no_files(corpus, tmp_path):
    ds, _, good = corpus
    view = ds.select(list(good)[-2:])  # good.png, exif.jpg
    two = fo.Detections(detections=[fo.Detection(label="a", bounding_box=BOX), fo.Detection(label="b", bounding_box=BOX)])
    view.set_values("gt", [two.copy(), two.copy()])
    blocked, free = view.values("id")
    folder = tmp_path / "png" / "masks"
    (folder / f"{blocked}-1.png").mkdir(parents=True)  # the second mask file of the first sample cannot be written
    summary = foo.get_operator(PROMPTS)(view, box_field="gt", label_field="masks", output_dir=str(tmp_path / "png"))
    assert list(summary["failed"]) == [blocked] and "Is a directory" in summary["failed"][blocked]
    assert ds[blocked].masks is None and ds[free].masks is not None
    assert sorted(p.name for p in folder.glob("*.png") if p.is_file()) == [f"{free}-0.png", f"{free}-1.png"]


def test_overhanging_boxes_are_cut_to_the_image_and_a_box_outside_it_is_reported(corpus):
    ds, _, good = corpus
    path = good[list(good)[-2]]  # good.png, 64 x 48
    height, width = unisam.load_image(path).shape[:2]
    over = [-0.02, 0.1, 1.05, 0.9002]  # reaches 1.3 px left, 1.9 px right, 0.01 px below the image
    outside = [1.1, 0.1, 0.2, 0.2]
    view = ds.select(list(good)[-2])
    sample = view.first()
    sample["over"] = fo.Detections(detections=[fo.Detection(label="over", bounding_box=over)])
    sample["outside"] = fo.Detections(detections=[fo.Detection(label="gone", bounding_box=outside)])
    sample.save()
    x, y, w, h = over
    raw = [x * width, y * height, (x + w) * width, (y + h) * height]
    with pytest.raises(ValueError, match="reaches outside the image"):
        unisam.segment(path, box=raw)  # the core refuses it as given
    summary = foo.get_operator(PROMPTS)(view, box_field="over", label_field="cut")
    assert summary["failed"] == {}
    expected = unisam.segment(path, box=np.clip(raw, 0, [width, height, width, height])).masks
    np.testing.assert_array_equal(full_masks(ds[sample.id].cut, path), expected)
    summary = foo.get_operator(PROMPTS)(view, box_field="outside", label_field="none")
    (reason,) = summary["failed"].values()
    detection_id = sample.outside.detections[0].id
    assert f"detection {detection_id} (label 'gone') has bounding box [1.1, 0.1, 0.2, 0.2]" in reason
    assert "lies outside the image" in reason and ds[sample.id].none is None


@pytest.mark.parametrize(
    "uri, params",
    [
        (PROMPTS, dict(box_field="gt")),
        (EVERYTHING, EVERYTHING_PARAMS),
    ],
)
def test_image_operators_never_replace_an_existing_field_unless_asked(corpus, uri, params):
    ds, _, good = corpus
    view = ds.select(list(good)[-2:])
    op = foo.get_operator(uri)
    op(view, label_field="out", **params)
    before = ds.values("out")
    with pytest.raises(ExecutionError, match="'out' already exists: tick 'overwrite'"):
        op(ds, label_field="out", **params)
    with pytest.raises(ExecutionError, match="does not hold Detections"):
        op(view, label_field="filepath", overwrite=True, **params)
    assert ds.values("out") == before
    queued = op(view, label_field="later", delegate=True, **params)  # checked again when it runs
    op(view, label_field="later", **params)
    later = ds.values("later")
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=ds.name)
    assert service.get(queued.result["id"]).run_state == "failed" and ds.values("later") == later
    ds.set_values("out", [None] * len(ds))
    op(view, label_field="out", overwrite=True, **params)
    assert sum(v is not None for v in ds.values("out")) == 2


def test_label_masks_keeps_the_labels_a_field_has_unless_asked(corpus):
    ds, _, good = corpus
    by_name = {path.name: sample_id for sample_id, path in good.items()}
    example, kept, unnamed = by_name["gray16.png"], by_name["good.png"], by_name["exif.jpg"]
    mask = np.zeros((12, 16), bool)
    mask[2:10, 3:12] = True
    for sample_id, name in ((example, "b"), (kept, "a"), (unnamed, None)):
        sample = ds[sample_id]
        sample["masks"] = fo.Detections(detections=[fo.Detection(label=name, bounding_box=BOX, mask=mask)])
        sample.tags = ["examples"] if sample_id == example else []
        sample.save()
    targets = ds.select([kept, unnamed], ordered=True)
    op = foo.get_operator(LABEL)
    op(targets, label_field="masks", examples_tag="examples")  # one class among the examples: "b"
    assert targets.values("masks.detections.label") == [["a"], ["b"]]  # "a" was there: kept
    op(targets, label_field="masks", examples_tag="examples", overwrite=True)
    assert targets.values("masks.detections.label") == [["b"], ["b"]]


def test_delegated_track_reports_progress_frame_by_frame(tmp_path):
    scene = tracking_scene()
    path = write_video(tmp_path / "nuclei.mp4", scene.frames)
    ds = fo.Dataset()
    sample = fo.Sample(filepath=str(path))
    first = dict(zip(scene.truth[0].ids.tolist(), scene.truth[0].masks))
    boxes = []
    for i, m in first.items():
        x1, y1, x2, y2 = pixel_box(m)
        boxes.append(fo.Detection(bounding_box=[x1 / SIZE, y1 / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE], index=i))
    sample.frames[1]["gt"] = fo.Detections(detections=boxes)
    ds.add_samples([sample, fo.Sample(filepath=str(path))])  # the second has no prompts: skipped
    try:
        queued = foo.get_operator(TRACK)(ds, prompt_field="gt", label_field="tracks", delegate=True)
        service = DelegatedOperationService()
        runner = threading.Thread(target=service.execute_queued_operations, kwargs={"dataset_name": ds.name})
        seen = []
        runner.start()
        while runner.is_alive():  # what the run's page shows while it runs
            status = service.get(queued.result["id"]).status
            if status is not None and (not seen or seen[-1] != (status.progress, status.label)):
                seen.append((status.progress, status.label))
            time.sleep(0.005)
        runner.join()
        done = service.get(queued.result["id"])
        assert done.run_state == "completed", done.result
        frames = [(p, label) for p, label in seen if label and "frame steps" in label]
        assert len(frames) >= 3, seen  # several frames of the first video seen one by one
        assert all(0 < p <= 0.5 for p, _ in frames) and all(label.startswith("sample 1 / 2") for _, label in frames)
        progress = [p for p, _ in seen if p is not None]
        assert progress == sorted(progress) and done.status.progress == 1.0
        steps = {int(re.search(r"(\d+) / (\d+) frame steps", label).group(2)) for _, label in frames}
        assert len(steps) == 1 and steps.pop() >= VIDEO_FRAMES  # every frame is a step
    finally:
        ds.delete()
