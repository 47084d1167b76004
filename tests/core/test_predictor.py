"""The ONNX Runtime predictor against the official EdgeSAM predictor, on the same random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unisam
from unisam.runtime.cache import DiskEmbeddingCache

from reference import install_reference_stubs


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w, 1), yy * 255 / max(h, 1), (xx + yy) % 255], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference_predictor(reference_edgesam):
    install_reference_stubs()
    from edge_sam import SamPredictor

    return SamPredictor(reference_edgesam)


def _reference(ref, image, **prompt):
    ref.set_image(image)
    with torch.no_grad():
        logits, iou, low_res = ref.predict(return_logits=True, **prompt)
    return logits, iou, low_res, ref.get_image_embedding().numpy()


def _assert_close(ours: np.ndarray, theirs: np.ndarray, what: str, rel: float = 2e-3) -> None:
    scale = float(np.abs(theirs).max()) or 1.0
    diff = float(np.abs(ours - theirs).max())
    assert diff <= rel * scale, f"{what}: max abs diff {diff:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("size", [(300, 500), (640, 480), (7, 5)])
def test_point_prompt_matches_reference(edgesam_predictor, reference_predictor, size):
    h, w = size
    image = _image(h, w)
    points = np.array([[w * 0.4, h * 0.5], [w * 0.7, h * 0.2]])
    labels = np.array([1, 0])
    ref_logits, ref_iou, ref_low, ref_emb = _reference(
        reference_predictor, image, point_coords=points, point_labels=labels, num_multimask_outputs=3
    )
    emb = edgesam_predictor.embed(image)
    _assert_close(emb.features, ref_emb, "image embedding")
    pred = edgesam_predictor.predict(emb, points=points, point_labels=labels, multimask=True)
    assert pred.masks.shape == (3, h, w) and pred.masks.dtype == bool
    _assert_close(pred.low_res_logits, ref_low, "low-res logits")
    _assert_close(pred.scores, ref_iou, "predicted IoU", rel=5e-3)
    full = edgesam_predictor.upscale(emb, pred.low_res_logits)
    _assert_close(full, ref_logits, "full-resolution logits")
    confident = np.abs(ref_logits) > 1e-2 * np.abs(ref_logits).max()
    assert np.array_equal(pred.masks[confident], (ref_logits > 0)[confident])


def test_box_points_and_single_output_match_reference(edgesam_predictor, reference_predictor):
    image = _image(360, 720, seed=3)
    box = np.array([100, 50, 400, 300])
    for prompt in (
        {"box": box},
        {"box": box, "point_coords": np.array([[250.0, 180.0]]), "point_labels": np.array([1])},
    ):
        ref_logits, ref_iou, ref_low, _ = _reference(reference_predictor, image, num_multimask_outputs=1, **prompt)
        pred = edgesam_predictor.predict(
            edgesam_predictor.embed(image),
            points=prompt.get("point_coords"),
            point_labels=prompt.get("point_labels"),
            box=prompt["box"],
            multimask=False,
        )
        assert pred.masks.shape == (1, 360, 720)
        _assert_close(pred.low_res_logits, ref_low, f"low-res logits {sorted(prompt)}")
        _assert_close(pred.scores, ref_iou, f"IoU {sorted(prompt)}", rel=5e-3)


def test_refinement_with_previous_mask_matches_reference(edgesam_predictor, reference_predictor):
    image = _image(400, 300, seed=4)
    emb = edgesam_predictor.embed(image)
    first = edgesam_predictor.predict(emb, points=[[150, 200]], point_labels=[1], multimask=True)
    previous = first.low_res_logits[first.best]
    points = np.array([[150, 200], [60, 80]])
    labels = np.array([1, 0])
    _, ref_iou, ref_low, _ = _reference(
        reference_predictor, image, point_coords=points, point_labels=labels,
        mask_input=previous[None], num_multimask_outputs=1,
    )
    refined = edgesam_predictor.predict(emb, points=points, point_labels=labels, mask_input=previous, multimask=False)
    _assert_close(refined.low_res_logits, ref_low, "refined low-res logits")
    without_mask = edgesam_predictor.predict(emb, points=points, point_labels=labels, multimask=False)
    assert not np.allclose(without_mask.low_res_logits, refined.low_res_logits), "mask input had no effect"


def test_batched_prompts_equal_one_by_one(edgesam_predictor):
    image = _image(256, 320, seed=5)
    emb = edgesam_predictor.embed(image)
    prompts = [
        unisam.Prompt(points=np.array([[30.0, 40.0]]), point_labels=np.array([1.0])),
        unisam.Prompt(box=np.array([10.0, 10.0, 200.0, 150.0])),
        unisam.Prompt(points=np.array([[100.0, 90.0]]), point_labels=np.array([1.0])),
        unisam.Prompt(points=np.array([[50.0, 60.0], [70.0, 20.0]]), point_labels=np.array([1.0, 0.0])),
    ]
    batched = edgesam_predictor.predict_prompts(emb, prompts, multimask=True)
    for prompt, got in zip(prompts, batched):
        alone = edgesam_predictor.predict_prompts(emb, [prompt], multimask=True)[0]
        np.testing.assert_allclose(got.low_res_logits, alone.low_res_logits, atol=1e-4)
        np.testing.assert_array_equal(got.masks, alone.masks)


def test_encoder_runs_once_per_image_and_disk_cache_survives_reload(edgesam_onnx, tmp_path):
    model = unisam.load_model(weights=edgesam_onnx, disk_cache=tmp_path / "emb")
    image = _image(200, 300, seed=6)
    first = model.embed(image)
    again = model.embed(image.copy())
    assert again is first and model.encoder_runs == 1 and model.cache.hits == 1
    assert len(list((tmp_path / "emb").rglob("*.npz"))) == 1
    reopened = unisam.load_model(weights=edgesam_onnx, disk_cache=tmp_path / "emb")
    restored = reopened.embed(image)
    assert reopened.encoder_runs == 0
    np.testing.assert_array_equal(restored.features, first.features)
    other = DiskEmbeddingCache(tmp_path / "emb").get("another-model:0", first.image_digest)
    assert other is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "empty prompt"),
        ({"points": [[500, 10]], "point_labels": [1]}, "outside the image"),
        ({"points": [[-1, 10]], "point_labels": [1]}, "outside the image"),
        ({"box": [200, 100, 50, 150]}, "x1 < x2"),
        ({"box": [400, 300, 500, 400]}, "outside the image"),
        ({"points": [[10, 10]], "point_labels": [1, 0]}, "2 point labels"),
        ({"points": [[10, 10]], "point_labels": [5]}, "foreground"),
        ({"points": [[np.nan, 10]], "point_labels": [1]}, "NaN"),
        ({"points": [[10, 10]], "mask_input": np.zeros((64, 64))}, "low-res logits"),
    ],
)
def test_bad_prompts_raise_clear_errors(edgesam_predictor, kwargs, message):
    emb = edgesam_predictor.embed(_image(240, 320, seed=7))
    with pytest.raises(ValueError, match=message):
        edgesam_predictor.predict(emb, **kwargs)


def test_bad_images_raise_clear_errors_and_16bit_rgba_work(edgesam_predictor):
    with pytest.raises(ValueError, match="NaN"):
        edgesam_predictor.embed(np.full((32, 32), np.nan, np.float32))
    with pytest.raises(ValueError):
        edgesam_predictor.embed(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        edgesam_predictor.embed(np.zeros((2, 3, 4, 5), np.uint8))
    sixteen = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) + 300
    rgba = np.dstack([_image(64, 48), np.full((64, 48), 128, np.uint8)])
    for image in (sixteen, rgba):
        emb = edgesam_predictor.embed(image)
        assert emb.original_size == (64, 48)
        assert edgesam_predictor.predict(emb, points=[[20, 30]], point_labels=[1]).masks.shape == (3, 64, 48)


def test_embedding_of_another_model_is_refused(edgesam_predictor, edgesam_onnx):
    emb = edgesam_predictor.embed(_image(64, 64, seed=8))
    other = unisam.load_model("renamed", weights=edgesam_onnx)
    with pytest.raises(ValueError, match="made by model"):
        other.predict(emb, points=[[10, 10]], point_labels=[1])
