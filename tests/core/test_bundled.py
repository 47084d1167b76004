"""The model that ships inside the package: intact, torch-free, the default without official weights,
and good enough that a click or a box gives the object (checked against synthetic ground truth)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unisam
from unisam.registry import BUNDLED_MODEL, get_card
from unisam.data.synthetic import generate_sample
from unisam.weights import sha256_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(directory))
    return directory


def test_bundled_files_match_their_recorded_hashes_and_arch():
    card = get_card(BUNDLED_MODEL)
    meta = json.loads((card.bundled / "model.json").read_text())
    assert sha256_file(card.bundled / "encoder.onnx") == meta["encoder_sha256"]
    assert sha256_file(card.bundled / "decoder.onnx") == meta["decoder_sha256"]
    assert card.arch.image_size == meta["image_size"] == 256
    assert sum(p.stat().st_size for p in card.bundled.glob("*.onnx")) < 8e6  # "a few MB"


def test_default_is_the_bundled_model_until_edgesam_weights_are_cached(empty_cache):
    assert unisam.default_model() == BUNDLED_MODEL
    model = unisam.load_model()
    assert model.name == BUNDLED_MODEL and model.spec.image_size == 256
    empty_cache.mkdir()
    (empty_cache / get_card("edgesam").checkpoint.filename).write_bytes(b"")  # presence decides, load verifies
    assert unisam.default_model() == "edgesam"


def test_get_model_is_shared_and_bundled_model_takes_no_weights(empty_cache):
    assert unisam.get_model(BUNDLED_MODEL) is unisam.get_model(BUNDLED_MODEL)
    assert unisam.get_model() is unisam.get_model(BUNDLED_MODEL)
    with pytest.raises(ValueError, match="ships with unisam"):
        unisam.load_model(BUNDLED_MODEL, weights="model.pth")


def test_bundled_model_runs_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, unisam\n"
        "img = np.zeros((64, 80, 3), np.uint8); img[20:40, 30:50] = 255\n"
        "r = unisam.segment(img, box=[30, 20, 49, 39], model='unisam-tiny')\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print(int(r.masks[0].sum()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 200 < int(done.stdout.strip()) < 800  # the 20x20 square, not nothing and not everything


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("kind", ["nuclei", "cells", "brightfield", "shapes"])
def test_box_prompts_recover_held_out_synthetic_objects(kind):
    """Fresh scenes (a seed the recipe never trained on), every object boxed at once."""
    rng = np.random.default_rng(20261125)
    ious = []
    for _ in range(2):
        sample = generate_sample(rng, (192, 192), kind)
        prompts = []
        for mask in sample.masks:
            ys, xs = np.nonzero(mask)
            prompts.append(unisam.Prompt(box=np.array([xs.min(), ys.min(), xs.max(), ys.max()], float)))
        result = unisam.segment(sample.image, prompts, model=BUNDLED_MODEL)
        ious += [_iou(p, g) for p, g in zip(result.masks, sample.masks)]
    assert len(ious) >= 4
    assert np.mean(ious) > 0.5, f"{kind}: mean box IoU {np.mean(ious):.3f} over {len(ious)} objects"


def test_readme_main_command_segments_the_clicked_nucleus(empty_cache, tmp_path):
    """The README's main command (its `unisam segment ...` part, as written there), with an empty cache."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "pip install ." in line).split("&& unisam ")[1].split()
    assert command[:4] == ["segment", "examples/nuclei.png", "--point", "334,303"] and command[-2] == "--out"
    out = tmp_path / command[-1]
    exe = Path(sys.executable).with_name("unisam")
    done = subprocess.run([str(exe), *command[:-1], str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    mask = np.array(Image.open(out)) > 0
    grey = np.asarray(Image.open(ROOT / "examples" / "nuclei.png").convert("L"), float)
    assert mask[303, 334]
    assert 300 < mask.sum() < 3000  # one nucleus (about 40 x 25 px), not a cluster or the background
    assert grey[mask].mean() > 4 * np.median(grey)  # bright nucleus on a dark background
    expected = unisam.segment(ROOT / "examples" / "nuclei.png", points=[[334, 303]], model=BUNDLED_MODEL)
    np.testing.assert_array_equal(mask, expected.masks[0])


def test_everything_uses_the_models_own_thresholds_and_finds_objects():
    tiny, sam = unisam.everything_defaults(BUNDLED_MODEL), unisam.everything_defaults("edgesam")
    assert (sam.pred_iou_thresh, sam.stability_score_thresh) == (0.88, 0.95)  # SAM's own defaults
    assert tiny == sam.replace(**get_card(BUNDLED_MODEL).everything) and tiny.pred_iou_thresh < 0.88
    sample = generate_sample(np.random.default_rng(7), (128, 128), "nuclei")
    found = unisam.segment_everything(sample.image, model=BUNDLED_MODEL, points_per_side=16)
    assert len(found) > 0
    best = [max(_iou(m, g) for m in found.masks) for g in sample.masks]
    assert max(best) > 0.5  # at least one object found as itself, not only fragments or clusters
    explicit = unisam.segment_everything(sample.image, model=BUNDLED_MODEL, points_per_side=16,
                                         pred_iou_thresh=0.99)
    assert len(explicit) < len(found)  # a given parameter wins over the model's default
