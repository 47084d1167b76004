"""The int8 encoder: the bundled unisam-tiny-int8 loads, agrees with float32, and is what quantize_export makes."""

import json

import numpy as np
import pytest

import unisam
from unisam.data.synthetic import generate_sample
from unisam.masks import masks_to_boxes
from unisam.quantize import quantize_export
from unisam.registry import ASSETS, BUNDLED_MODEL, get_card, read_export
from unisam.weights import sha256_file

INT8 = BUNDLED_MODEL + "-int8"


def test_int8_card_is_unisam_tiny_with_a_smaller_quantized_encoder():
    card, fp32 = get_card(INT8), get_card(BUNDLED_MODEL)
    assert card.arch == fp32.arch and card.everything == fp32.everything
    meta = read_export(card.bundled)[1]
    assert meta["quantized"].startswith("int8") and sha256_file(card.bundled / "encoder.onnx") == meta["encoder_sha256"]
    assert sha256_file(card.bundled / "decoder.onnx") == sha256_file(fp32.bundled / "decoder.onnx")
    assert (card.bundled / "encoder.onnx").stat().st_size < 0.5 * (fp32.bundled / "encoder.onnx").stat().st_size


def _mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a & b).sum(axis=(1, 2)) / np.maximum((a | b).sum(axis=(1, 2)), 1)).mean())


def test_int8_masks_agree_with_fp32():
    # box prompts on every object of synthetic scenes of the four kinds; measured: IoU between the int8
    # and fp32 masks 0.81 (brightfield, 14 objects) to 0.96 (nuclei), mean 0.91; box mIoU against the
    # truth 0.3-0.9 points lower
    fp32, int8 = unisam.load_model(BUNDLED_MODEL), unisam.load_model(INT8)
    rng = np.random.default_rng(123)
    agree, truth_fp32, truth_int8 = [], [], []
    for kind in ("nuclei", "cells", "shapes", "brightfield"):
        sample = generate_sample(rng, (256, 256), kind)
        prompts = [unisam.Prompt(box=b) for b in masks_to_boxes(sample.masks)]
        a = unisam.segment(sample.image, prompts, model=fp32).masks
        b = unisam.segment(sample.image, prompts, model=int8).masks
        agree.append(_mean_iou(a, b))
        truth_fp32.append(_mean_iou(a, sample.masks))
        truth_int8.append(_mean_iou(b, sample.masks))
    assert min(agree) > 0.7 and np.mean(agree) > 0.85, agree
    assert np.mean(truth_int8) > np.mean(truth_fp32) - 0.03, (truth_fp32, truth_int8)


def test_quantize_export_rebuilds_the_bundled_encoder(tmp_path):
    out = quantize_export(ASSETS / BUNDLED_MODEL, tmp_path / "int8")
    meta = json.loads((out / "model.json").read_text())
    assert meta["encoder_sha256"] == sha256_file(out / "encoder.onnx") and meta["quantized"].startswith("int8")
    assert "instances_sha256" not in meta and not (out / "instances.onnx").exists()  # heads fit one encoder
    rebuilt, bundled = unisam.load_model(weights=out), unisam.load_model(INT8)
    image = generate_sample(np.random.default_rng(7), (256, 256), "nuclei").image
    np.testing.assert_allclose(rebuilt.embed(image).features, bundled.embed(image).features, atol=1e-4)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_export(out, tmp_path / "twice")
