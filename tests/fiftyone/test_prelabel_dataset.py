"""The prelabel job on a real FiftyOne dataset (issue #19): Detections written per sample, a re-run
resumes (also after a real kill), an existing field is never overwritten unless asked, and the Ray
engine writes what the local one does.

Oracle: ``unisam.segment_everything`` on the same image files."""

import os
import signal
import subprocess
import sys
import time

import fiftyone.core.odm.database as fodb
import numpy as np
import pytest

import unisam
from unisam.cli import main
from unisam_fiftyone.prelabel import MARK, prelabel_dataset

OPTIONS = {"points_per_side": 8}


def test_prelabel_writes_detections_and_resumes(dataset):
    report = prelabel_dataset(dataset, "pre", progress=False, **OPTIONS)
    assert (report.processed, report.skipped, report.failures) == (3, 0, [])
    total = 0
    for sample in dataset:
        expected = unisam.segment_everything(sample.filepath, **OPTIONS)
        dets = sample["pre"].detections
        assert len(dets) == len(expected) > 0
        np.testing.assert_allclose([d.confidence for d in dets], expected.scores, rtol=1e-6)
        for det, mask in zip(dets, expected.masks):
            full = det.to_segmentation(frame_size=mask.shape[::-1], target=1).mask.astype(bool)
            np.testing.assert_array_equal(full, mask)
        assert len(sample["pre"][MARK]) == 64
        total += len(dets)
    assert report.instances == total

    again = prelabel_dataset(dataset, "pre", progress=False, **OPTIONS)
    assert (again.processed, again.skipped) == (0, 3)
    first = dataset.first()
    first["pre"] = None  # as if a run had stopped before this sample
    first.save()
    resumed = prelabel_dataset(dataset, "pre", progress=False, **OPTIONS)
    assert (resumed.processed, resumed.skipped) == (1, 2)
    assert len(dataset.first()["pre"].detections) == len(unisam.segment_everything(first.filepath, **OPTIONS))


def test_an_existing_field_is_not_overwritten_unless_asked(dataset):
    before = [len(s["gt"].detections) for s in dataset]
    with pytest.raises(ValueError, match="unisam did not write; pass overwrite=True"):
        prelabel_dataset(dataset, "gt", progress=False, **OPTIONS)
    assert [len(s["gt"].detections) for s in dataset] == before
    assert all(d.label.startswith("obj") for s in dataset for d in s["gt"].detections)
    report = prelabel_dataset(dataset, "gt", overwrite=True, progress=False, **OPTIONS)
    assert report.processed == 3
    assert all(d.label is None and d.mask is not None for s in dataset for d in s["gt"].detections)


def test_the_ray_engine_writes_what_the_local_one_does(dataset, ray_cluster):
    prelabel_dataset(dataset, "local", progress=False, **OPTIONS)
    report = prelabel_dataset(dataset, "remote", engine="ray", workers=2, progress=False, **OPTIONS)
    assert (report.processed, report.failures) == (3, [])
    for sample in dataset:
        local, remote = sample["local"].detections, sample["remote"].detections
        assert len(local) == len(remote) > 0
        assert [d.bounding_box for d in local] == [d.bounding_box for d in remote]
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(local, remote))


KILLED_RUN = """
import sys, fiftyone as fo
from unisam import prelabel
from unisam_fiftyone.prelabel import DatasetSource, DetectionsSink
samples = fo.load_dataset(sys.argv[1])
job = prelabel.Job(DatasetSource(samples), [prelabel.SegmentEverything(options={"points_per_side": 16})],
                   DetectionsSink(samples, "pre", shard_size=1))  # a database write per sample
job.run(progress=False)
"""


def test_a_killed_run_resumes_without_duplicates_or_gaps(dataset):
    """A real run in another process, SIGKILLed after some samples were written, then resumed
    here: every sample labelled once, each as segment_everything gives it."""
    dataset.add_samples([type(s)(filepath=s.filepath) for s in dataset] * 3)  # 12 samples
    host, port = fodb.get_db_client().address
    env = {**os.environ, "FIFTYONE_DATABASE_URI": f"mongodb://{host}:{port}"}
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN, dataset.name], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    written = 0
    while time.monotonic() < deadline and run.poll() is None and written < 2:
        dataset.reload()  # the other process declares the field
        written = len(dataset.exists("pre")) if dataset.has_sample_field("pre") else 0
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    dataset.reload()
    done = len(dataset.exists("pre"))
    assert 2 <= done < 12
    resumed = prelabel_dataset(dataset, "pre", progress=False, points_per_side=16)
    assert resumed.skipped >= done and resumed.skipped + resumed.processed == 12 and not resumed.failures
    expected = {p: unisam.segment_everything(p, points_per_side=16) for p in set(dataset.values("filepath"))}
    for sample in dataset:
        dets, want = sample["pre"].detections, expected[sample.filepath]
        assert len(dets) == len(want) > 0
        np.testing.assert_allclose([d.confidence for d in dets], want.scores, rtol=1e-6)
    again = prelabel_dataset(dataset, "pre", progress=False, points_per_side=16)
    assert (again.processed, again.skipped) == (0, 12)


def test_the_cli_prelabels_a_dataset_by_name(dataset, capsys):
    """``unisam prelabel fiftyone:<name> --out <field>``: the ``fiftyone`` target found through its entry point."""
    assert main(["prelabel", f"fiftyone:{dataset.name}", "--out", "pre", "--points-per-side", "8"]) == 0
    assert f"wrote field 'pre' of fiftyone:{dataset.name}" in capsys.readouterr().out
    for sample in dataset:
        expected = unisam.segment_everything(sample.filepath, **OPTIONS)
        np.testing.assert_allclose([d.confidence for d in sample["pre"].detections], expected.scores, rtol=1e-6)
    assert main(["prelabel", f"fiftyone:{dataset.name}", "--out", "pre", "--points-per-side", "8"]) == 0
    printed = capsys.readouterr().out
    assert "0 images" in printed and "3 already done" in printed
    assert main(["prelabel", f"fiftyone:{dataset.name}", "--out", "gt", "--points-per-side", "8"]) == 2
    assert "unisam did not write" in capsys.readouterr().err
    for argv, message in [(["fiftyone:no-such-dataset", "--out", "pre"], "no FiftyOne dataset named 'no-such-dataset'"),
                          ([f"fiftyone:{dataset.name}", "--out", "a.b"], "not a field name"),
                          ([f"fiftyone:{dataset.name}", "--out", "pre", "--format", "png"], "written back to its host"),
                          ([f"fiftyone:{dataset.name}", "--out", "pre", "--shard-size", "0"], "shard_size must be >= 1"),
                          (["nohost:thing", "--out", "pre"], "'nohost' is not a host (hosts: fiftyone")]:
        assert main(["prelabel", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_the_cli_names_the_masks_in_the_dataset(dataset, clip_export, capsys):
    vocabulary = ["bright disk", "dark background"]
    one = dataset.limit(1).clone()  # CLIP runs on every mask: one sample is enough
    assert main(["prelabel", f"fiftyone:{one.name}", "--out", "named", "--points-per-side", "8",
                 "--vocabulary", ";".join(vocabulary), "--label-model", str(clip_export)]) == 0
    for sample in one:
        expected = unisam.segment_and_label(sample.filepath, vocabulary, label_model=str(clip_export), **OPTIONS)
        dets = sample["named"].detections
        assert [d.label for d in dets] == expected.labels
        np.testing.assert_allclose([d.confidence for d in dets], expected.label_scores, rtol=1e-5)
