"""The runtime accepts EdgeSAM's ONNX files as its authors publish them.

The pair is made the way the official ``scripts/export_onnx_model.py`` makes it (reference model with
bilinear upsampling, ``SamCoreMLModel`` decoder wrapper, opset 11, inputs ``image`` /
``image_embeddings, point_coords, point_labels``, outputs ``scores, masks``), from random weights.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from unisam.registry import EDGE_SAM
from unisam.runtime.predictor import Predictor

from conftest import randomize_norm_layers
from reference import install_reference_stubs


@pytest.fixture(scope="module")
def official_pair(tmp_path_factory):
    install_reference_stubs()
    from edge_sam import build_sam
    from edge_sam.utils.coreml import SamCoreMLModel

    torch.manual_seed(5)
    model = build_sam(upsample_mode="bilinear")
    randomize_norm_layers(model, torch.Generator().manual_seed(6))
    model.eval()
    out = tmp_path_factory.mktemp("official")
    encoder, decoder = out / "edge_sam_3x_encoder.onnx", out / "edge_sam_3x_decoder.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.image_encoder, (torch.zeros(1, 3, 1024, 1024),), str(encoder), dynamo=False, opset_version=11,
            input_names=["image"], output_names=["image_embeddings"],
        )
        torch.onnx.export(
            SamCoreMLModel(model).eval(), (torch.zeros(1, 256, 64, 64), torch.zeros(1, 2, 2), torch.ones(1, 2)),
            str(decoder), dynamo=False, opset_version=11,
            input_names=["image_embeddings", "point_coords", "point_labels"], output_names=["scores", "masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    return model.eval(), encoder, decoder


def test_official_onnx_pair_matches_the_reference_predictor(official_pair):
    from edge_sam import SamPredictor

    model, encoder, decoder = official_pair
    predictor = Predictor(encoder, decoder, EDGE_SAM, "edgesam-3x-onnx:test")
    assert not predictor.accepts_mask_input
    reference = SamPredictor(model)
    rng = np.random.default_rng(0)
    image = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
    reference.set_image(image)
    emb = predictor.embed(image)
    points, labels, box = np.array([[300.0, 200.0], [100.0, 50.0]]), np.array([1, 0]), np.array([50, 60, 400, 300])
    for prompt, n_out, multimask in (
        ({"point_coords": points, "point_labels": labels}, 3, True),
        ({"box": box}, 1, False),
    ):
        with torch.no_grad():
            _, ref_iou, ref_low = reference.predict(num_multimask_outputs=n_out, return_logits=True, **prompt)
        ours = predictor.predict(
            emb, points=prompt.get("point_coords"), point_labels=prompt.get("point_labels"), box=prompt.get("box"),
            multimask=multimask,
        )
        scale = np.abs(ref_low).max()
        diff = np.abs(ours.low_res_logits - ref_low).max()
        assert diff <= 2e-3 * scale, f"{sorted(prompt)}: max abs logit diff {diff:.3g} (scale {scale:.3g})"
        np.testing.assert_allclose(ours.scores, ref_iou, rtol=5e-3, atol=5e-3)
    with pytest.raises(ValueError, match="no mask input"):
        predictor.predict(emb, points=points, point_labels=labels, mask_input=ours.low_res_logits[0])
