"""Auto-labeling in the Label Studio backend (issue #16), on the payloads Label Studio 1.23 sent
(fixtures/): batch regions named from the config's labels (CLIP) or like the project's submitted
annotations (examples from the webhook), interactive regions keep the clicked label unless asked.
Oracle: unisam.label on the same image and masks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import unisam
from fastapi.testclient import TestClient
from ls_helpers import EVERYTHING, TOKEN, ImageHost, decode_brush, disks_image, keypoint, load_fixture, png_bytes

from unisam_labelstudio import Settings, UnisamBackend, create_app

SETUP = load_fixture("setup.json")
INTERACTIVE = load_fixture("predict_interactive.json")
BATCH = load_fixture("predict_batch.json")
EVENT = load_fixture("webhook_annotation_created.json")
IMAGE, TRUTH, DISKS = disks_image()
SIZE = (IMAGE.shape[1], IMAGE.shape[0])
LABELS = ["Nucleus", "Cell"]  # the fixture config's brush labels


@pytest.fixture(scope="module")
def host():
    tasks = INTERACTIVE["tasks"] + BATCH["tasks"] + [EVENT["task"]]
    with ImageHost({task["data"]["image"]: png_bytes(IMAGE) for task in tasks}) as server:
        yield server


@pytest.fixture
def client(host, clip_export) -> TestClient:
    settings = Settings(model="unisam-tiny", label_studio_url=host.url, api_key=TOKEN, label_model=str(clip_export))
    return TestClient(create_app(UnisamBackend(settings)))


def setup(client, **extra) -> None:
    answer = client.post("/setup", json={**SETUP, "extra_params": {**SETUP["extra_params"], **extra}})
    assert answer.status_code == 200, answer.text


def batch_regions(client) -> list[dict]:
    (prediction,) = client.post("/predict", json=BATCH).json()["results"]
    return prediction["result"]


def test_batch_regions_are_named_from_the_configs_labels(client, clip_export):
    setup(client, auto_label="text")
    regions = batch_regions(client)
    found = unisam.segment_everything(IMAGE, model="unisam-tiny", **EVERYTHING)
    expected = unisam.label(IMAGE, found, LABELS, model=str(clip_export))
    np.testing.assert_array_equal(np.stack([decode_brush(r) for r in regions]), found.masks)
    assert [r["value"]["brushlabels"][0] for r in regions] == expected.labels
    assert set(expected.labels) <= set(LABELS)


def test_regions_below_the_unknown_threshold_keep_the_default_label(client, clip_export):
    found = unisam.segment_everything(IMAGE, model="unisam-tiny", **EVERYTHING)
    scores = unisam.label(IMAGE, found, LABELS, model=str(clip_export)).label_scores
    threshold = float(np.median(scores))  # about half the regions fall below it
    setup(client, auto_label="text", auto_label_unknown=threshold)
    expected = unisam.label(IMAGE, found, LABELS, model=str(clip_export), unknown=threshold)
    names = [r["value"]["brushlabels"][0] for r in batch_regions(client)]
    assert None in expected.labels and any(expected.labels)
    assert names == [name or "Nucleus" for name in expected.labels]


def test_batch_regions_are_named_like_the_submitted_annotations(client):
    setup(client, auto_label="examples")
    before = batch_regions(client)  # no annotation submitted yet: the default label
    assert {r["value"]["brushlabels"][0] for r in before} == {"Nucleus"}
    assert client.post("/webhook", json=EVENT).json()["result"]["examples"] == 1
    annotated = [r for r in EVENT["annotation"]["result"] if r["type"] == "brushlabels"]
    examples = [(IMAGE, unisam.Instances.from_masks(np.stack([decode_brush(r) for r in annotated]),
                                                    labels=[r["value"]["brushlabels"][0] for r in annotated]))]
    regions = batch_regions(client)
    found = unisam.segment_everything(IMAGE, model="unisam-tiny", **EVERYTHING)
    expected = unisam.label(IMAGE, found, examples=examples, segment_model="unisam-tiny")
    assert [r["value"]["brushlabels"][0] for r in regions] == expected.labels == ["Cell"] * len(found)
    # the annotation deleted: its example goes, and the regions fall back to the default label
    deleted = {**EVENT, "action": "ANNOTATION_DELETED"}
    assert client.post("/webhook", json=deleted).json()["result"]["examples"] == 0
    assert {r["value"]["brushlabels"][0] for r in batch_regions(client)} == {"Nucleus"}


def test_clicked_regions_keep_their_label_unless_auto_labels_are_asked_for(client, clip_export):
    body = copy.deepcopy(INTERACTIVE)
    body["params"]["context"] = {"result": [keypoint(*DISKS[0][:2], SIZE)]}
    clicked = body["params"]["context"]["result"][0]["value"]["keypointlabels"][0]
    setup(client, auto_label="text")
    (kept,) = client.post("/predict", json=body).json()["results"]
    assert kept["result"][0]["value"]["brushlabels"] == [clicked]
    setup(client, auto_label="text", auto_label_clicks=True)
    (named,) = client.post("/predict", json=body).json()["results"]
    mask = decode_brush(named["result"][0])
    expected = unisam.label(IMAGE, unisam.Instances.from_masks(mask[None]), LABELS, model=str(clip_export))
    assert named["result"][0]["value"]["brushlabels"] == expected.labels


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"auto_label": "always"}, "auto_label must be one of"),
     ({"auto_label_clicks": "yes"}, "must be true or false"),
     ({"auto_label": "text", "label_model": "ViT-B-32/no-such-tag"}, "needs a CLIP model"),
     ({"auto_label_unknown": 1.5}, "auto_label_unknown must be a number in [0, 1]"),
     ({"auto_label_unknown": "high"}, "auto_label_unknown must be a number in [0, 1]")],
)
def test_bad_auto_label_setups_are_refused_at_setup(client, extra, message):
    answer = client.post("/setup", json={**SETUP, "extra_params": {**SETUP["extra_params"], **extra}})
    assert answer.status_code == 400 and message in answer.json()["error"]
