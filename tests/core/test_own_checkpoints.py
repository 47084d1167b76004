"""Your own checkpoints (issue #15): a fine-tuned file in an official layout loads by architecture name.

The fine-tuned file is the reference EdgeSAM's state dict with part of its encoder and decoder
changed, saved as a fine-tuning run would save it. ``unisam.load_model("edgesam", weights=file)``
must load it strictly and safely, export it once under its own digest, and predict what the reference
code (``edge_sam``'s ``SamPredictor``) predicts with the same weights. Two exports in all (the
official-layout random checkpoint of ``conftest`` and the fine-tuned one), in one cache for the module.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import install_reference_stubs

import unisam
from unisam import weights
from unisam.models.checkpoint import load_checkpoint
from unisam.models.sam import build_sam
from unisam.registry import EDGE_SAM
from unisam.weights import WeightsNotFoundError, sha256_file

ARCH = "edgesam"
# what fine-tuning changed: the last encoder block and the neck, two-thirds of the decoder
TUNED = (
    "image_encoder.features.25.",
    "image_encoder.neck.",
    "mask_decoder.transformer.layers.1.",
    "mask_decoder.output_hypernetworks_mlps.",
    "mask_decoder.iou_prediction_head.",
)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, ((xx // 32 + yy // 32) % 2) * 200], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


IMAGE = _image(300, 420, seed=5)
PROMPTS = [  # (unisam predict kwargs, reference predict kwargs)
    (
        {"points": [[170.0, 140.0], [300.0, 60.0]], "point_labels": [1, 0], "multimask": True},
        {"point_coords": np.array([[170.0, 140.0], [300.0, 60.0]]), "point_labels": np.array([1, 0]),
         "num_multimask_outputs": 3},
    ),
    (
        {"box": [60, 40, 280, 230], "multimask": False},
        {"box": np.array([60, 40, 280, 230]), "num_multimask_outputs": 1},
    ),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One isolated ``UNISAM_CACHE_DIR`` for the module, so exports are shared between its tests."""
    directory = tmp_path_factory.mktemp("own-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNISAM_CACHE_DIR", str(directory))
        yield directory


@pytest.fixture(scope="module")
def finetuned_state(reference_edgesam) -> dict[str, torch.Tensor]:
    """The reference state dict with seeded noise on the weights under :data:`TUNED`."""
    generator = torch.Generator().manual_seed(15)
    state = {k: v.detach().clone() for k, v in reference_edgesam.state_dict().items()}
    changed = []
    for key, value in state.items():
        if not key.startswith(TUNED) or not key.endswith(".weight") or not value.is_floating_point():
            continue
        noise = torch.randn(value.shape, generator=generator)
        if value.ndim >= 2:  # convolutions and linear layers
            value += 0.5 * value.std() * noise
        else:  # norm scales stay positive
            value *= 1 + 0.1 * noise.clamp(-2, 2)
        changed.append(key)
    assert {k.split(".")[0] for k in changed} == {"image_encoder", "mask_decoder"} and len(changed) > 30
    return state


@pytest.fixture(scope="module")
def finetuned_checkpoint(finetuned_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("finetuned") / "my_finetuned.pth"
    torch.save(finetuned_state, path)
    return path


@pytest.fixture(scope="module")
def finetuned_reference(reference_edgesam, finetuned_state):
    """The reference code's predictor on the fine-tuned weights."""
    install_reference_stubs()
    from edge_sam import SamPredictor

    model = copy.deepcopy(reference_edgesam)
    model.load_state_dict(finetuned_state, strict=True)
    return SamPredictor(model.eval())


@pytest.fixture(scope="module")
def official(cache, edgesam_checkpoint):
    """unisam on the conftest checkpoint (the official layout and the official model's random weights)."""
    return unisam.load_model(ARCH, weights=edgesam_checkpoint)


@pytest.fixture(scope="module")
def finetuned(cache, finetuned_checkpoint):
    return unisam.load_model(ARCH, weights=finetuned_checkpoint)


def _exports(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "onnx").iterdir())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _assert_close(ours: np.ndarray, theirs: np.ndarray, what: str, rel: float = 2e-3) -> None:
    scale = float(np.abs(theirs).max()) or 1.0
    diff = float(np.abs(ours - theirs).max())
    assert diff <= rel * scale, f"{what}: max abs diff {diff:.3g} (scale {scale:.3g})"


def test_finetuned_checkpoint_predicts_what_the_reference_code_predicts(finetuned, official, finetuned_reference):
    emb = finetuned.embed(IMAGE)
    emb_official = official.embed(IMAGE)
    finetuned_reference.set_image(IMAGE)
    _assert_close(emb.features, finetuned_reference.get_image_embedding().numpy(), "image embedding")
    for ours_kwargs, ref_kwargs in PROMPTS:
        what = sorted(ours_kwargs)
        with torch.no_grad():
            ref_logits, ref_iou, ref_low = finetuned_reference.predict(return_logits=True, **ref_kwargs)
        pred = finetuned.predict(emb, **ours_kwargs)
        assert pred.masks.shape == ref_logits.shape
        _assert_close(pred.low_res_logits, ref_low, f"low-res logits {what}")
        _assert_close(pred.scores, ref_iou, f"predicted IoU {what}", rel=5e-3)
        for k in range(len(pred.masks)):
            assert (ref_logits[k] > 0).any(), "a degenerate reference mask would make the IoU meaningless"
            assert _iou(pred.masks[k], ref_logits[k] > 0) > 0.99, f"mask {k} {what}"

        # ...and it is not the official-weights model: logits and scores differ by ten times and more
        # the tolerance within which they match the reference, and the masks are other masks
        base = official.predict(emb_official, **ours_kwargs)
        scale = float(np.abs(ref_low).max())
        assert float(np.abs(base.low_res_logits - pred.low_res_logits).max()) > 0.2 * scale, what
        assert float(np.abs(base.scores - pred.scores).max()) > 0.05 * float(np.abs(ref_iou).max()), what
        assert min(_iou(b, p) for b, p in zip(base.masks, pred.masks)) < 0.95, what


def test_each_file_has_its_own_export_made_once(cache, official, finetuned, finetuned_checkpoint,
                                                edgesam_checkpoint, tmp_path, monkeypatch, caplog):
    official_dir = f"{ARCH}-{sha256_file(edgesam_checkpoint)[:12]}"
    finetuned_dir = f"{ARCH}-{sha256_file(finetuned_checkpoint)[:12]}"
    assert official_dir != finetuned_dir
    assert _exports(cache) == sorted([official_dir, finetuned_dir])
    assert official.model_id != finetuned.model_id  # so their embeddings never mix in a cache
    stamps = {p: p.stat().st_mtime_ns for p in (cache / "onnx").glob("*/*.onnx")}

    hashed = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    with caplog.at_level(logging.INFO, logger="unisam.weights"):
        again = unisam.load_model(ARCH, weights=finetuned_checkpoint)
    assert hashed == []  # the digest of a file already seen is remembered, not recomputed
    assert again.model_id == finetuned.model_id
    notes = [r.getMessage() for r in caplog.records if r.name == "unisam.weights"]
    assert len(notes) == 1 and str(finetuned_checkpoint) in notes[0]
    assert "own fine-tuned weights for the edgesam architecture" in notes[0]

    # the same bytes under another name are the same file: hashed once, and the same export
    twin = tmp_path / "copy_of_my_finetuned.pth"
    shutil.copy(finetuned_checkpoint, twin)
    assert unisam.load_model(ARCH, weights=twin).model_id == finetuned.model_id
    assert hashed == [twin.name]
    assert _exports(cache) == sorted([official_dir, finetuned_dir])
    assert {p: p.stat().st_mtime_ns for p in (cache / "onnx").glob("*/*.onnx")} == stamps  # nothing re-exported


class _RunsCode:
    """Unpickling this runs a shell command: ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_refused_unexecuted(cache, official, writer, tmp_path):
    exports = _exports(cache)
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "pwned"
    state = {"mask_decoder.iou_token.weight": torch.zeros(1, 256), "optimizer": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(state, evil)
    else:
        with evil.open("wb") as f:
            pickle.dump(state, f)

    with pytest.raises(ValueError) as info:
        unisam.load_model(ARCH, weights=evil)
    message = str(info.value)
    assert "not a plain tensor checkpoint" in message and "not executed" in message
    assert "system" in message and str(evil) in message
    assert not marker.exists(), "the pickle's code ran"
    assert _exports(cache) == exports

    # the payload is real: an unsafe load does run it (so the assertion above can fail)
    control = tmp_path / "ran"
    state["optimizer"] = _RunsCode(control)
    torch.save(state, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()


def test_missing_keys_are_named_and_nothing_is_exported(cache, official, finetuned_state, tmp_path):
    exports = _exports(cache)
    state = dict(finetuned_state)
    del state["mask_decoder.iou_token.weight"], state["image_encoder.neck.0.weight"]
    path = tmp_path / "incomplete.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        unisam.load_model(ARCH, weights=path)
    message = str(info.value)
    assert "2 missing keys" in message
    assert "mask_decoder.iou_token.weight" in message and "image_encoder.neck.0.weight" in message
    assert "'edgesam'" in message and str(path) in message
    assert _exports(cache) == exports

    # a DataParallel-style prefix: every key is missing and every one in the file is extra; both named
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"module.{k}": v for k, v in finetuned_state.items()}, prefixed)
    with pytest.raises(ValueError) as info:
        unisam.load_model(ARCH, weights=prefixed)
    message = str(info.value)
    assert f"{len(finetuned_state)} missing keys: image_encoder.features.0.0.c.weight" in message
    assert f"{len(finetuned_state)} keys the model does not have: module.image_encoder.features.0.0.c.weight" in message
    assert _exports(cache) == exports


def test_extra_keys_are_reported_and_logged(finetuned_state, tmp_path, caplog):
    extra = {"ema.decay": torch.tensor(0.999), "head.classifier.weight": torch.zeros(2, 3)}
    path = tmp_path / "with_extras.pth"
    torch.save({**finetuned_state, **extra}, path)
    model = build_sam(EDGE_SAM)
    with caplog.at_level(logging.WARNING, logger="unisam.models.checkpoint"):
        report = load_checkpoint(model, path)
    assert sorted(report.unexpected) == sorted(extra)
    assert report.loaded == len(finetuned_state)
    assert "ema.decay" in caplog.text and "head.classifier.weight" in caplog.text and str(path) in caplog.text
    ours = model.state_dict()
    assert all(torch.equal(ours[k], finetuned_state[k]) for k in ours)


def test_truncated_corrupt_and_missing_files_are_clear_errors(cache, official, finetuned_checkpoint, tmp_path):
    exports = _exports(cache)
    data = finetuned_checkpoint.read_bytes()
    cases = {
        "truncated.pth": data[: len(data) // 2],
        "tail_cut.pth": data[:-100],
        "empty.pth": b"",
        "text.pth": b"this is not a checkpoint\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match="truncated or corrupt") as info:
            unisam.load_model(ARCH, weights=path)
        assert str(path) in str(info.value), name
        assert "Traceback" not in str(info.value) and info.value.__cause__ is None, name
    with pytest.raises(WeightsNotFoundError, match="no_such_file.pth"):
        unisam.load_model(ARCH, weights=tmp_path / "no_such_file.pth")
    assert _exports(cache) == exports
