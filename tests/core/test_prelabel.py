"""unisam prelabel (issue #19): sources, sinks, resuming after a real kill, the CLI, and the Ray engine
giving the same files as the local one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import unisam
from unisam import prelabel
from unisam.cli import main
from unisam.data.synthetic import generate_sample

OPTIONS = {"points_per_side": 8}


def _images(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        target = folder / ("nested" if i % 2 else "") / f"img{i:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(generate_sample(rng, (size, size)).image).save(target)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Five small images (two in a subfolder) and a text file named .png."""
    root = _images(tmp_path_factory.mktemp("images"), 5, 128)
    (root / "broken.png").write_text("not an image")
    return root


def _job(source, out: Path, fmt: str = "coco", shard_size: int = 2) -> prelabel.Job:
    sink = {"coco": prelabel.CocoSink, "png": prelabel.PngSink}[fmt](out, shard_size)
    return prelabel.Job(source, [prelabel.SegmentEverything(options=OPTIONS)], sink)


def test_folder_to_coco_matches_segment_everything(folder, tmp_path):
    report = _job(prelabel.FolderSource(folder), tmp_path / "out").run(progress=False)
    assert (report.images, report.processed, report.skipped) == (6, 5, 0)
    assert len(report.failures) == 1 and report.failures[0][0] == "broken.png"
    assert "broken.png" in report.failures[0][1] and "\n" not in report.failures[0][1]
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    names = [im["file_name"] for im in coco["images"]]
    assert names == ["img00.png", "img02.png", "img04.png", "nested/img01.png", "nested/img03.png"]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    assert len(coco["annotations"]) == report.instances > 0
    for image in coco["images"]:
        expected = unisam.segment_everything(folder / image["file_name"], **OPTIONS)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        rles = [a["segmentation"] for a in anns]
        masks = unisam.Instances.from_rle(rles, image_size=(image["height"], image["width"])).masks
        assert [a["area"] for a in anns] == [int(a) for a in mask_utils.area(rles)]
        np.testing.assert_array_equal(masks, expected.masks)
        np.testing.assert_allclose([a["score"] for a in anns], expected.scores, rtol=1e-6)


def test_png_sink_and_coco_source(folder, tmp_path):
    listing = {"images": [{"id": 7, "file_name": "nested/img01.png"}, {"id": 9, "file_name": "img04.png"}]}
    (tmp_path / "list.json").write_text(json.dumps(listing))
    report = _job(prelabel.CocoSource(tmp_path / "list.json", folder), tmp_path / "png", "png").run(progress=False)
    assert (report.processed, report.failures) == (2, [])
    for name in ("nested/img01.png", "img04.png"):
        written = np.asarray(Image.open(tmp_path / "png" / "labels" / f"{name}.png"))
        expected = unisam.segment_everything(folder / name, **OPTIONS).to_label_image()
        np.testing.assert_array_equal(written, expected)
    coco = _job(prelabel.CocoSource(tmp_path / "list.json", folder), tmp_path / "coco").run(progress=False)
    ids = [im["id"] for im in json.loads((tmp_path / "coco" / "annotations.json").read_text())["images"]]
    assert coco.processed == 2 and ids == [7, 9]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_resume_after_kill_gives_the_same_annotations(tmp_path, engine):
    """A real run killed (SIGKILL, with its Ray processes: its whole process group) midway, then
    resumed: every image exactly once, as an unbroken run."""
    root = _images(tmp_path / "images", 12, 256, seed=3)
    command = [sys.executable, "-m", "unisam.cli", "prelabel", str(root), "--out", str(tmp_path / "killed"),
               "--points-per-side", "16", "--shard-size", "1", "--engine", engine]
    if engine == "ray":
        command += ["--workers", "2"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = tmp_path / "killed" / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    done = len(manifest.read_text().splitlines())
    assert 3 <= done < 12 and not (tmp_path / "killed" / "annotations.json").exists()

    def job(out: str) -> prelabel.Job:
        sink = prelabel.CocoSink(tmp_path / out, 1)
        return prelabel.Job(prelabel.FolderSource(root), [prelabel.SegmentEverything(options={"points_per_side": 16})], sink)

    resumed = job("killed").run(progress=False)
    assert resumed.skipped >= done and resumed.skipped + resumed.processed == 12
    whole = job("whole").run(progress=False)
    assert whole.processed == 12
    killed = json.loads((tmp_path / "killed" / "annotations.json").read_text())
    assert killed == json.loads((tmp_path / "whole" / "annotations.json").read_text())
    assert len({im["file_name"] for im in killed["images"]}) == 12
    again = job("killed").run(progress=False)
    assert (again.skipped, again.processed) == (12, 0)


def test_changed_options_refused_and_cli(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prelabel", str(folder), "--out", str(out), "--points-per-side", "8", "--format", "png"]) == 0
    assert "5 images" in capsys.readouterr().out
    assert main(["prelabel", str(folder), "--out", str(out), "--points-per-side", "4", "--format", "png"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other options" in err and "\n" not in err
    assert main(["prelabel", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "neither an image folder nor a COCO" in capsys.readouterr().err
    assert main(["prelabel", str(folder), "--out", str(tmp_path / "a" / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["prelabel", str(folder), "--out", str(tmp_path / "w"), "--workers", "0"]) == 2
    assert "workers must be >= 1" in capsys.readouterr().err
    assert main(["prelabel", str(folder), "--out", str(tmp_path / "w"), "--workers", "2"]) == 2  # local engine
    assert "options of the ray engine" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    with pytest.raises(SystemExit) as stop:
        main(["prelabel", str(folder), "--out", str(out), "--engine", "spark"])
    assert stop.value.code == 2


def test_ray_engine_gives_the_local_output(folder, tmp_path, ray_cluster):
    local = _job(prelabel.FolderSource(folder), tmp_path / "local").run(progress=False)
    remote = _job(prelabel.FolderSource(folder), tmp_path / "ray").run("ray", workers=2, progress=False)
    assert (remote.processed, remote.failures) == (local.processed, local.failures)
    for name in ("annotations.json", "manifest.jsonl"):
        a, b = (tmp_path / side / name for side in ("local", "ray"))
        if name == "manifest.jsonl":  # the order results arrive in may differ; the set of done images may not
            def images(p):
                return {k: v for line in p.read_text().splitlines() for k, v in json.loads(line)["images"].items()}
            assert images(a) == images(b)
        else:
            assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_label_step_names_the_masks_as_segment_and_label(folder, tmp_path, clip_export):
    vocabulary = ("bright disk", "dark background")
    steps = [prelabel.SegmentEverything(options=OPTIONS), prelabel.Label(vocabulary, str(clip_export))]
    report = prelabel.Job(prelabel.FolderSource(folder), steps, prelabel.CocoSink(tmp_path / "out")).run(progress=False)
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]][:2] == list(vocabulary) and report.processed == 5
    for image in coco["images"]:
        expected = unisam.segment_and_label(folder / image["file_name"], list(vocabulary), label_model=str(clip_export), **OPTIONS)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        names = [coco["categories"][a["category_id"] - 1]["name"] for a in anns]
        assert names == expected.labels
        np.testing.assert_allclose([a["label_score"] for a in anns], expected.label_scores, rtol=1e-5)


# -- the track step: sequences in, tracks out ------------------------------------------------------------

TRACK_OPTIONS = {"points_per_side": 8, "min_iou": 0.2}


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> Path:
    """Three sequences of one synthetic tracking scene each (a folder of PNG frames, a multi-page TIFF,
    a lossless video), a broken video, and what is not a sequence (a text file, a folder without images)."""
    import av
    import tifffile

    from unisam.data.synthetic.tracking import generate_tracking_scene

    root = tmp_path_factory.mktemp("sequences")
    scenes = [generate_tracking_scene(np.random.default_rng(seed), 6, (96, 96), objects=3, events=(), radius=(9, 12))
              for seed in range(3)]
    (root / "frames").mkdir()
    for t, frame in enumerate(scenes[0].frames):
        Image.fromarray(frame).save(root / "frames" / f"{t:03d}.png")
    tifffile.imwrite(root / "stack.tif", np.stack(scenes[1].frames))
    with av.open(str(root / "clip.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "bgr0"
        for frame in scenes[2].frames:
            rgb = np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 cut off")
    (root / "notes.txt").write_text("not a sequence")
    (root / "empty").mkdir()
    return root


def _track_job(root: Path, out: Path, fmt: str = "coco", steps=None) -> prelabel.Job:
    sink = {"coco": prelabel.CocoSink, "png": prelabel.PngSink}[fmt](out, 1)
    return prelabel.Job(prelabel.SequenceSource(root), steps or [prelabel.Track(options=TRACK_OPTIONS)], sink)


def _decoded(coco: dict, video_id: int) -> list[tuple[list[int], np.ndarray]]:
    """Per frame of one video: its sequence's track ids and the masks (N, H, W), from a COCO video file."""
    local = {t["id"]: t["local_id"] for t in coco["tracks"]}
    frames = sorted((im for im in coco["images"] if im["video_id"] == video_id), key=lambda im: im["frame_index"])
    out = []
    for image in frames:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        masks = np.stack([mask_utils.decode(a["segmentation"]).astype(bool) for a in anns]) if anns else np.zeros((0, 96, 96), bool)
        out.append(([local[a["track_id"]] for a in anns], masks))
    return out


def test_track_step_writes_coco_video_equal_to_unisam_track(sequences, tmp_path):
    report = _track_job(sequences, tmp_path / "out").run(progress=False)
    assert (report.images, report.processed, report.unit) == (4, 3, "sequence")
    assert [key for key, _ in report.failures] == ["broken.mp4"] and "sequences" in report.summary()
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [(v["id"], v["file_name"], v["length"]) for v in coco["videos"]] == [(2, "clip.mkv", 6), (3, "frames", 6), (4, "stack.tif", 6)]  # ids in name order, broken.mp4 is 1
    assert sorted(a["id"] for a in coco["annotations"]) == list(range(1, len(coco["annotations"]) + 1))
    assert len({t["id"] for t in coco["tracks"]}) == len(coco["tracks"])  # track ids unique over the file
    for video in coco["videos"]:
        expected = unisam.track(sequences / video["file_name"], **TRACK_OPTIONS)
        assert len(expected.ids()) >= 3
        for (ids, masks), frame in zip(_decoded(coco, video["id"]), expected, strict=True):
            assert ids == frame.ids.tolist()
            np.testing.assert_array_equal(masks, frame.masks)
    again = _track_job(sequences, tmp_path / "out").run(progress=False)
    assert (again.skipped, again.processed) == (3, 0)  # the broken video is tried again, the rest kept
    assert json.loads((tmp_path / "out" / "annotations.json").read_text()) == coco


def test_track_step_png_labels_are_the_label_stacks(sequences, tmp_path):
    _track_job(sequences, tmp_path / "png", "png").run(progress=False)
    for name in ("frames", "stack.tif", "clip.mkv"):
        files = sorted((tmp_path / "png" / "labels" / name).glob("*.png"))
        written = np.stack([np.asarray(Image.open(f)) for f in files])
        np.testing.assert_array_equal(written, unisam.track(sequences / name, **TRACK_OPTIONS).to_label_stack())
    assert not (tmp_path / "png" / "labels" / "broken.mp4").exists()


def test_changed_frames_are_tracked_again(sequences, tmp_path):
    root = tmp_path / "seq"
    (root / "frames").mkdir(parents=True)
    for f in (sequences / "frames").iterdir():
        (root / "frames" / f.name).write_bytes(f.read_bytes())
    assert _track_job(root, tmp_path / "out", "png").run(progress=False).processed == 1
    frame = np.asarray(Image.open(root / "frames" / "002.png"))
    Image.fromarray(255 - frame).save(root / "frames" / "002.png")  # one frame edited: the sequence's hash changes
    assert _track_job(root, tmp_path / "out", "png").run(progress=False).processed == 1
    (root / "frames" / "005.png").unlink()  # the sequence gets shorter: no label PNG of the old last frame is left
    assert _track_job(root, tmp_path / "out", "png").run(progress=False).processed == 1
    labels = tmp_path / "out" / "labels" / "frames"
    assert sorted(p.name for p in labels.iterdir()) == [f"{t:05d}.png" for t in range(5)]
    written = np.stack([np.asarray(Image.open(labels / f"{t:05d}.png")) for t in range(5)])
    np.testing.assert_array_equal(written, unisam.track(root / "frames", **TRACK_OPTIONS).to_label_stack())
    assert _track_job(root, tmp_path / "out", "png").run(progress=False).processed == 0


def test_track_step_is_checked_before_any_work(sequences, tmp_path):
    with pytest.raises(ValueError, match="unknown option .* for automatic tracking"):
        _track_job(sequences, tmp_path / "a", steps=[prelabel.Track(options={"min_iuo": 0.2})]).run(progress=False)
    with pytest.raises(ValueError, match="min_iou, feature_weight in"):
        _track_job(sequences, tmp_path / "a", steps=[prelabel.Track(options={"min_iou": 2})]).run(progress=False)
    with pytest.raises(ValueError, match="first step"):
        _track_job(sequences, tmp_path / "a", steps=[prelabel.SegmentEverything(), prelabel.Track()]).run(progress=False)
    assert not (tmp_path / "a").exists()


def test_track_cli(sequences, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["prelabel", str(sequences), "--track", "--out", str(out), "--points-per-side", "8", "--min-iou", "0.2",
                 "--shard-size", "1"]) == 0
    assert "3 sequences" in capsys.readouterr().out
    _track_job(sequences, tmp_path / "api").run(progress=False)
    assert json.loads((out / "annotations.json").read_text()) == json.loads((tmp_path / "api" / "annotations.json").read_text())
    assert main(["prelabel", str(sequences), "--out", str(tmp_path / "x"), "--min-iou", "0.2"]) == 2
    assert "needs --track" in capsys.readouterr().err
    assert main(["prelabel", str(sequences / "stack.tif"), "--track", "--out", str(tmp_path / "x")]) == 2
    assert "folder of sequences" in capsys.readouterr().err


def test_label_step_on_sequences_gives_one_name_per_track(sequences, tmp_path, clip_export):
    vocabulary = ("bright disk", "dark background")
    root = tmp_path / "one"  # one sequence: CLIP runs on each of its frames
    root.mkdir()
    (root / "stack.tif").write_bytes((sequences / "stack.tif").read_bytes())
    steps = [prelabel.Track(options=TRACK_OPTIONS), prelabel.Label(vocabulary, str(clip_export))]
    _track_job(root, tmp_path / "out", steps=steps).run(progress=False)
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    model = unisam.get_label_model(str(clip_export))
    for video in coco["videos"]:
        tracks = unisam.track(root / video["file_name"], **TRACK_OPTIONS)
        with unisam.open_frames(root / video["file_name"]) as frames:
            labelled = unisam.Tracks([unisam.label(frames[t], f, list(vocabulary), model=model) for t, f in enumerate(tracks)])
        expected = labelled.vote_labels()
        names = {c["id"]: c["name"] for c in coco["categories"]}
        anns = sorted((a for a in coco["annotations"] if a["video_id"] == video["id"]), key=lambda a: a["image_id"])
        got = [(names[a["category_id"]], a["label_score"]) for a in anns]
        want = [(name, score) for f in expected for name, score in zip(f.labels, f.label_scores.tolist())]
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-5)
    per_track = {}
    for a in coco["annotations"]:
        per_track.setdefault(a["track_id"], set()).add(a["category_id"])
    assert all(len(c) == 1 for c in per_track.values())  # one name per track
    assert {t["category_id"] for t in coco["tracks"]} <= set(names)


def test_ray_engine_tracks_as_the_local_one(sequences, tmp_path, ray_cluster):
    local = _track_job(sequences, tmp_path / "local").run(progress=False)
    remote = _track_job(sequences, tmp_path / "ray").run("ray", workers=2, progress=False)
    assert (remote.processed, remote.failures) == (local.processed, local.failures)
    a, b = (json.loads((tmp_path / side / "annotations.json").read_text()) for side in ("local", "ray"))
    assert a == b
