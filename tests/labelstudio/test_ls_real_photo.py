"""Batch prelabel of a real photo through the backend app (issue #18): scikit-image's ``coins``
(24 coins; the benchmark's reference, benchmarks/real_images.py, has 22 masks, two touching pairs
merged). Label Studio's batch request with the dense-objects settings (``object_size`` and the
benchmark's thresholds, as extra params set at /setup) returns exactly the core's
``segment_everything`` masks, and they find at least 20 of the reference coins at IoU 0.5."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import unisam
from fastapi.testclient import TestClient
from ls_helpers import TOKEN, ImageHost, decode_brush, load_fixture, png_bytes
from skimage import data

from unisam_labelstudio import Settings, UnisamBackend, create_app

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from real_images import DENSE, RealImage, coin_masks, recall_precision  # noqa: E402  the benchmark's reference

COINS = data.coins()  # (303, 384) uint8, a real photo
REFERENCE = RealImage("coins", COINS, sum(k * m for k, m in enumerate(coin_masks(COINS), 1)).astype(np.int32))


def _batch_prelabel(params: dict) -> np.ndarray:
    """The coins photo through the backend app's /setup (extra params) and batch /predict: (N, H, W) masks."""
    setup = copy.deepcopy(load_fixture("setup.json"))
    setup["extra_params"] = {"label": "Nucleus", **params}
    batch = copy.deepcopy(load_fixture("predict_batch.json"))
    path = batch["tasks"][0]["data"]["image"]
    with ImageHost({path: png_bytes(COINS)}) as host:
        backend = UnisamBackend(Settings(model="unisam-tiny", label_studio_url=host.url, api_key=TOKEN))
        client = TestClient(create_app(backend))
        assert client.post("/setup", json=setup).status_code == 200
        answer = client.post("/predict", json={**batch, "tasks": batch["tasks"][:1]})
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    return np.stack([decode_brush(region) for region in prediction["result"]])


def test_coins_batch_prelabel_finds_20_coins_as_the_core_does():
    params = {"object_size": REFERENCE.object_size, **DENSE}
    masks = _batch_prelabel(params)
    expected = unisam.segment_everything(COINS, model=unisam.load_model("unisam-tiny"), **params)
    np.testing.assert_array_equal(masks, expected.masks)
    recall, precision = recall_precision(masks, REFERENCE.labels)
    assert int(round(recall * REFERENCE.labels.max())) >= 20, (recall, precision)


def test_watershed_mode_is_picked_by_an_extra_param_as_in_the_core():
    params = {"object_size": REFERENCE.object_size, "watershed_seed_thresh": 0.3}
    masks = _batch_prelabel(params)
    expected = unisam.segment_everything(COINS, model=unisam.load_model("unisam-tiny"), **params)
    np.testing.assert_array_equal(masks, expected.masks)
    recall, _ = recall_precision(masks, REFERENCE.labels)
    assert recall >= 0.6 and masks.sum(0).max() == 1  # a watershed partition, not the grid's overlapping masks
