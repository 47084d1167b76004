"""Public API and the ``unisam`` command, end to end on a random-weight EdgeSAM export.

Weight resolution is exercised for real: a model card whose files are the test's own checkpoint,
served by a local HTTP server, downloaded into a temporary cache, verified, exported and run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unisam
from unisam.cli import main
from unisam.registry import EDGE_SAM, ModelCard, WeightFile, register
from unisam.weights import WeightsNotFoundError


def _image(h: int = 240, w: int = 320) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx % 256, yy % 256, ((xx // 40 + yy // 40) % 2) * 255], -1)
    return img.astype(np.uint8)


@pytest.fixture()
def image_file(tmp_path) -> Path:
    path = tmp_path / "image.png"
    Image.fromarray(_image()).save(path)
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(directory))
    return directory


@pytest.fixture(scope="module")
def served(edgesam_checkpoint):
    """The test checkpoint behind a real HTTP server on 127.0.0.1, and a registered card for it."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(edgesam_checkpoint.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data = edgesam_checkpoint.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    card = register(
        ModelCard(
            name=f"test-edgesam-{sha[:8]}",
            arch=EDGE_SAM,
            description="random-weight EdgeSAM for tests",
            checkpoint=WeightFile(
                "edge_sam_test.pth", f"http://127.0.0.1:{server.server_port}/{edgesam_checkpoint.name}", sha, len(data)
            ),
        )
    )
    yield card
    server.shutdown()


def test_segment_returns_the_predictors_best_mask(edgesam_predictor):
    image = _image()
    result = unisam.segment(image, points=[[100, 120]], model=edgesam_predictor)
    emb = edgesam_predictor.embed(image)
    pred = edgesam_predictor.predict(emb, points=[[100, 120]], point_labels=[1], multimask=True)
    assert len(result) == 1 and result.masks.shape == (1, 240, 320)
    np.testing.assert_array_equal(result.masks[0], pred.masks[pred.best])
    assert result.scores[0] == pytest.approx(float(pred.scores.max()))
    box_only = unisam.segment(image, box=[20, 30, 200, 180], model=edgesam_predictor)
    single = edgesam_predictor.predict(emb, box=[20, 30, 200, 180], multimask=False)
    np.testing.assert_array_equal(box_only.masks[0], single.masks[0])  # boxes default to one mask


def test_segment_many_prompts_keeps_order_and_labels(edgesam_predictor):
    prompts = [
        unisam.Prompt(box=np.array([10, 10, 100, 100]), label="cat"),
        unisam.Prompt(points=np.array([[200, 50]]), point_labels=np.array([1]), label="dog"),
    ]
    result = unisam.segment(_image(), prompts, model=edgesam_predictor)
    assert result.labels == ["cat", "dog"]
    for i, prompt in enumerate(prompts):
        alone = unisam.segment(_image(), prompt, model=edgesam_predictor)
        np.testing.assert_array_equal(result.masks[i], alone.masks[0])
    unnamed = unisam.segment(_image(), [prompts[0], unisam.Prompt(box=np.array([5, 5, 50, 60]))],
                             model=edgesam_predictor)
    assert unnamed.labels == ["cat", None]  # an unnamed prompt stays unnamed, not "None"
    with pytest.raises(ValueError, match="no prompts"):
        unisam.segment(_image(), [], model=edgesam_predictor)
    with pytest.raises(ValueError, match="outside the image"):
        unisam.segment(_image(), unisam.Prompt(points=np.array([[999, 5]])), model=edgesam_predictor)


def test_segment_everything_returns_consistent_instances(edgesam_predictor):
    result = unisam.segment_everything(
        _image(), model=edgesam_predictor, points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert len(result) > 0
    assert result.masks.shape[1:] == (240, 320)
    assert (result.masks.reshape(len(result), -1).sum(1) > 0).all()
    np.testing.assert_array_equal(result.boxes, unisam.instances.masks_to_boxes(result.masks))
    assert (np.diff(result.scores) <= 0).all()


def test_missing_weights_give_one_clear_error(cache):
    with pytest.raises(WeightsNotFoundError) as err:
        unisam.load_model("edgesam")
    message = str(err.value)
    for part in ("edge_sam.pth", str(cache), "unisam weights pull edgesam", "huggingface.co"):
        assert part in message


def test_checkpoint_is_downloaded_verified_exported_once_and_cached(served, cache):
    with pytest.raises(WeightsNotFoundError):
        unisam.load_model(served.name)
    model = unisam.load_model(served.name, download=True)
    assert (cache / served.checkpoint.filename).is_file()
    exports = list((cache / "onnx").glob(f"{served.name}-*/encoder.onnx"))
    assert len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    again = unisam.load_model(served.name)  # offline now: cached checkpoint + cached export
    assert exports[0].stat().st_mtime_ns == stamp and again.model_id == model.model_id
    pred = again.predict(again.embed(_image()), points=[[50, 60]], point_labels=[1])
    assert pred.masks.shape == (3, 240, 320)


def _exports(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "onnx").iterdir()) if (cache / "onnx").is_dir() else []


def test_a_download_or_cached_file_with_the_wrong_hash_is_refused(served, cache):
    wrong = register(dataclasses.replace(
        served, name=f"{served.name}-wrong-sha", checkpoint=dataclasses.replace(served.checkpoint, sha256="0" * 64)
    ))
    with pytest.raises(ValueError, match="SHA-256") as info:
        unisam.load_model(wrong.name, download=True)
    assert "0" * 64 in str(info.value) and served.checkpoint.sha256 in str(info.value)
    assert not (cache / wrong.checkpoint.filename).exists() and _exports(cache) == []
    cache.mkdir(exist_ok=True)  # a cached copy that does not match the registry is refused too
    (cache / wrong.checkpoint.filename).write_bytes(b"not the checkpoint")
    with pytest.raises(ValueError, match="SHA-256"):
        unisam.load_model(wrong.name)
    assert _exports(cache) == []


def test_an_explicit_file_that_is_no_checkpoint_is_a_clear_error(served, cache, tmp_path):
    bad = tmp_path / "edge_sam.pth"
    bad.write_bytes(b"not the checkpoint")
    with pytest.raises(ValueError, match="not a plain tensor checkpoint.*truncated or corrupt"):
        unisam.load_model(served.name, weights=bad)
    with pytest.raises(ValueError, match="SHA-256.*verify=True"):  # insisting on the official file
        unisam.load_model(served.name, weights=bad, verify=True)
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        unisam.load_model(served.name, weights=tmp_path / "nope.pth")
    assert _exports(cache) == []  # nothing exported, no temporary export left behind


def test_cli_segment_writes_the_api_mask_and_refuses_to_overwrite(edgesam_onnx, edgesam_predictor, image_file,
                                                                  tmp_path, capsys):
    out = tmp_path / "mask.png"
    args = ["segment", str(image_file), "--point", "100,120", "--out", str(out), "--weights", str(edgesam_onnx)]
    assert main(args) == 0
    written = np.array(Image.open(out)) > 0
    expected = unisam.segment(image_file, points=[[100, 120]], model=edgesam_predictor).masks[0]
    np.testing.assert_array_equal(written, expected)
    assert "predicted IoU" in capsys.readouterr().out
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_cli_reports_bad_input_without_a_traceback(edgesam_onnx, image_file, tmp_path, capsys):
    out = tmp_path / "mask.png"
    common = ["--out", str(out), "--weights", str(edgesam_onnx)]
    assert main(["segment", str(image_file), "--point", "1000,5", *common]) == 2
    assert "outside the image" in capsys.readouterr().err
    assert main(["segment", str(image_file), "--box", "50,50,10,10", *common]) == 2
    assert "x1 < x2" in capsys.readouterr().err
    assert main(["segment", str(image_file), *common]) == 2
    assert "empty prompt" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["segment", str(corrupt), "--point", "1,1", *common]) == 2
    assert "corrupt.png" in capsys.readouterr().err
    assert not out.exists()


def test_cli_everything_export_and_weights(served, cache, edgesam_onnx, image_file, tmp_path, capsys):
    labels, rle = tmp_path / "labels.png", tmp_path / "instances.json"
    assert main([
        "everything", str(image_file), "--out", str(labels), "--rle", str(rle), "--weights", str(edgesam_onnx),
        "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    ]) == 0
    label_image = np.array(Image.open(labels))
    records = json.loads(rle.read_text())
    assert label_image.shape == (240, 320) and len(records) == len(np.unique(label_image[label_image > 0]))

    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "edgesam" in listing and "sam-vit-b" in listing and str(cache) in listing
    assert main(["weights", "pull", served.name]) == 0
    assert (cache / served.checkpoint.filename).is_file()
    out_dir = tmp_path / "export"
    assert main(["export", served.name, "--out", str(out_dir)]) == 0
    assert {p.name for p in out_dir.iterdir()} >= {"encoder.onnx", "decoder.onnx", "model.json"}
    assert main(["export", served.name, "--out", str(out_dir)]) == 2  # already there: not overwritten


def test_installed_command_runs(edgesam_onnx, image_file, tmp_path):
    out = tmp_path / "mask.png"
    exe = Path(sys.executable).with_name("unisam")
    done = subprocess.run(
        [str(exe), "segment", str(image_file), "--point", "60,60", "--out", str(out), "--weights", str(edgesam_onnx)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "wrote" in done.stdout
