"""The backend app on the exact payloads Label Studio 1.23 sent during the integration run (fixtures/),
with task images served by a local image host in place of Label Studio's file storage."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import unisam
from fastapi.testclient import TestClient
from unisam.registry import get_card
from ls_helpers import (
    EVERYTHING,
    TOKEN,
    BackendServer,
    ImageHost,
    decode_brush,
    disks_image,
    free_port,
    iou,
    keypoint,
    load_fixture,
    pixel_prompt,
    png_bytes,
)

from unisam_labelstudio import Settings, UnisamBackend, create_app

SETUP = load_fixture("setup.json")
INTERACTIVE = load_fixture("predict_interactive.json")
BATCH = load_fixture("predict_batch.json")
IMAGE, TRUTH, DISKS = disks_image()  # the image the fixtures were recorded with
SIZE = (IMAGE.shape[1], IMAGE.shape[0])
OTHERS = {f"/data/upload/1/other{i}.png": disks_image(shift=5 * i)[0] for i in (1, 2, 3)}


@pytest.fixture(scope="module")
def host():
    files = {task["data"]["image"]: png_bytes(IMAGE) for task in INTERACTIVE["tasks"] + BATCH["tasks"]}
    files.update({path: png_bytes(image) for path, image in OTHERS.items()})
    with ImageHost(files) as server:
        yield server


@pytest.fixture(scope="module")
def oracle() -> unisam.Predictor:
    """A separate predictor of the same model, to compute the expected masks independently."""
    return unisam.load_model("unisam-tiny")


def make_backend(host, **changes) -> UnisamBackend:
    settings = {"model": "unisam-tiny", "label_studio_url": host.url, "api_key": TOKEN, **changes}
    return UnisamBackend(Settings(**settings))


@pytest.fixture
def client(host) -> TestClient:
    return TestClient(create_app(make_backend(host)))


def interactive(regions: list[dict], image_url: str | None = None) -> dict:
    body = copy.deepcopy(INTERACTIVE)
    body["params"]["context"] = {"result": regions}
    if image_url:
        body["tasks"][0]["data"]["image"] = image_url
    return body


def test_health_setup_versions_answer_without_loading_the_model(client):
    backend = client.app.state.backend
    start = time.perf_counter()
    assert client.get("/health").json() == {
        "status": "UP",
        "model_class": "UnisamBackend",
        "model": "unisam-tiny",
        "model_loaded": False,
        "caches": {"images": {"entries": 0, "bytes": 0, "max_bytes": 256 * 2**20, "hits": 0, "misses": 0}},
    }
    assert client.get("/").status_code == 200
    assert client.post("/setup", json=SETUP).json() == {"model_version": "unisam-tiny"}
    assert client.get("/versions").json() == {"versions": ["unisam-tiny"]}
    assert time.perf_counter() - start < 1.0 and not backend.model_loaded


def test_recorded_interactive_request(client, oracle):
    regions = INTERACTIVE["params"]["context"]["result"]
    answer = client.post("/predict", json=INTERACTIVE)
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    (region,) = prediction["result"]
    expected = unisam.segment(IMAGE, **pixel_prompt(regions, SIZE), model=oracle)
    mask = decode_brush(region)
    assert np.array_equal(mask, expected.masks[0]) and iou(mask, TRUTH[1]) > 0.8
    assert region["value"]["brushlabels"] == [regions[-1]["value"]["rectanglelabels"][0]]
    assert (region["from_name"], region["to_name"], region["original_width"], region["original_height"]) == (
        "brush",
        "image",
        *SIZE,
    )
    assert prediction["score"] == pytest.approx(float(expected.scores[0]), abs=1e-6)
    assert prediction["model_version"] == "unisam-tiny"


def test_first_click_runs_the_encoder_later_clicks_only_the_decoder(client, oracle):
    predictor = client.app.state.backend.predictor
    predictor.cache.clear()
    runs = predictor.encoder_runs
    cx, cy, r = DISKS[0]
    clicks = [keypoint(cx, cy, SIZE)]
    for extra in ([], [keypoint(cx + r / 2, cy, SIZE)], [keypoint(cx + 2 * r, cy, SIZE, positive=False)]):
        clicks = clicks + extra
        (region,) = client.post("/predict", json=interactive(clicks)).json()["results"][0]["result"]
        mask = decode_brush(region)
        assert np.array_equal(mask, unisam.segment(IMAGE, **pixel_prompt(clicks, SIZE), model=oracle).masks[0])
        assert iou(mask, TRUTH[0]) > 0.5
        assert predictor.encoder_runs == runs + 1


def test_recorded_batch_request_after_setup(client, oracle):
    client.post("/setup", json=SETUP)  # extra params: label Nucleus + segment-everything parameters
    assert SETUP["extra_params"] == {"label": "Nucleus", **EVERYTHING}
    (prediction,) = client.post("/predict", json=BATCH).json()["results"]
    expected = unisam.segment_everything(IMAGE, model=oracle, **EVERYTHING)
    assert len(prediction["result"]) == len(expected) >= 3
    np.testing.assert_array_equal(np.stack([decode_brush(r) for r in prediction["result"]]), expected.masks)
    assert [r["score"] for r in prediction["result"]] == pytest.approx(expected.scores.tolist(), abs=1e-6)
    assert {r["value"]["brushlabels"][0] for r in prediction["result"]} == {"Nucleus"}


def test_batch_task_with_a_missing_image_gets_an_error_entry(host):
    client = TestClient(create_app(make_backend(host, everything=EVERYTHING)))  # as UNISAM_EVERYTHING_PARAMS
    body = copy.deepcopy(BATCH)
    body["tasks"].append({**body["tasks"][0], "id": 99, "data": {"image": "/data/upload/1/gone.png"}})
    answer = client.post("/predict", json=body)  # no /setup: the environment's settings and the first label
    assert answer.status_code == 200
    good, bad = answer.json()["results"]
    assert good["result"] and good["result"][0]["value"]["brushlabels"] == ["Nucleus"]
    assert "result" not in bad and bad["task"] == 99 and "HTTP 404" in bad["error"]


NO_BRUSH = '<View><Image name="image" value="$image"/><KeyPointLabels name="points" toName="image"/></View>'


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({**INTERACTIVE, "label_config": NO_BRUSH}, 400, "no <BrushLabels> control"),
        ({**BATCH, "label_config": NO_BRUSH}, 400, "no <BrushLabels> control"),
        (interactive([]), 400, "no keypoint and no rectangle"),
        (interactive([{**keypoint(5, 5, SIZE), "value": {"x": 50, "y": 100.5}}]), 400, "y = 100.5 is outside 0-100"),
        (interactive([keypoint(5, 5, SIZE, label="Dog")]), 400, "'Dog' is not a label of <BrushLabels"),
        (interactive([keypoint(5, 5, (SIZE[0] * 2, SIZE[1] * 2))]), 400, "Label Studio shows this image as 480x360"),
        (interactive([keypoint(5, 5, SIZE)], "/data/upload/1/gone.png"), 502, "HTTP 404"),
        ({**INTERACTIVE, "tasks": INTERACTIVE["tasks"] * 2}, 400, "exactly one task"),
        ({**BATCH, "tasks": {"id": 1}}, 400, "'tasks' must be a list"),
        ({**BATCH, "tasks": [{"id": 1, "data": {}}]}, 200, "no 'image' in its data"),
        ({**SETUP, "extra_params": {"points_per_side": 8, "size": 3}}, 400, "unknown segment-everything options"),
        ({**SETUP, "extra_params": {"label": "Dog"}}, 400, "'Dog' is not a label"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, body, status, message):
    path = "/setup" if "schema" in body else "/predict"
    answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"] if status != 200 else answer.json()["results"][0]["error"]
    assert message in error
    assert client.post("/predict", json=interactive([keypoint(*DISKS[2][:2], SIZE)])).status_code == 200


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "/setup needs 'schema'"),
        ({**SETUP, "schema": ""}, "/setup needs 'schema'"),
        ({**SETUP, "schema": 7}, "/setup needs 'schema'"),
        ({**SETUP, "schema": "<View></View>"}, "no <BrushLabels> control"),  # a new project's empty interface
        ({**SETUP, "schema": NO_BRUSH}, "no <BrushLabels> control"),
        ({**SETUP, "schema": "<View><Image name='image'"}, "cannot parse the labeling config"),
    ],
)
def test_setup_refuses_a_config_it_cannot_answer(client, body, message):
    answer = client.post("/setup", json=body)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"] and answer.json()["status"] == "ERROR"
    assert client.post("/setup", json=SETUP).json() == {"model_version": "unisam-tiny"}  # still serving


def _corpus():
    """The core's bad-input corpus (tests/core/bad_inputs.py), for task images Label Studio might serve."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
    try:
        import bad_inputs
    finally:
        sys.path.pop(0)
    return bad_inputs


@pytest.mark.parametrize(
    "name, words",
    [
        ("bomb.png", "has 10,000,000,000 pixels, more than the limit of 178,956,970 pixels"),
        ("bomb.tif", "is 100000 x 100000 = 10,000,000,000 pixels"),
        ("half.jpg", "truncated"),
        ("notes.png", "not an image format Pillow knows"),
        ("empty.png", "the file is empty (0 bytes)"),
    ],
)
def test_unreadable_task_images_are_a_clear_502_and_the_server_keeps_serving(client, host, name, words):
    corpus = _corpus()
    data = {
        "bomb.png": corpus.png_bytes(100_000, 100_000),
        "bomb.tif": corpus.tiff_claiming(100_000, 100_000),
        "half.jpg": corpus.encoded("JPEG")[: len(corpus.encoded("JPEG")) // 2],
        "notes.png": b"just some text",
        "empty.png": b"",
    }[name]
    host.files[f"/data/upload/1/bad-{name}"] = data
    url = f"/data/upload/1/bad-{name}"
    batch = {**BATCH, "tasks": [{**BATCH["tasks"][0], "data": {"image": url}}]}
    for clicked, body in ((True, interactive([keypoint(5, 5, SIZE)], url)), (False, batch)):
        answer = client.post("/predict", json=body)
        if clicked:  # interactive: the request fails
            assert answer.status_code == 502, answer.text
            error = answer.json()["error"]
        else:  # batch: the task's prediction carries the error, other tasks go on
            assert answer.status_code == 200, answer.text
            error = answer.json()["results"][0]["error"]
        assert words in error and "\n" not in error, error
    assert client.post("/predict", json=interactive([keypoint(*DISKS[2][:2], SIZE)])).status_code == 200


def test_malformed_bodies(client):
    assert client.post("/predict", content=b"not json", headers={"Content-Type": "application/json"}).status_code == 422
    assert client.post("/predict", json=[1, 2]).status_code == 422
    assert client.get("/health").status_code == 200


def test_model_errors(host):
    with pytest.raises(ValueError, match="unknown model 'no-such-model': give a registered model"):
        make_backend(host, model="no-such-model")
    client = TestClient(create_app(make_backend(host, model="sam-vit-h")))  # registered, weights not downloaded
    assert client.post("/setup", json=SETUP).json() == {"model_version": "sam-vit-h"}
    answer = client.post("/predict", json=INTERACTIVE)
    assert answer.status_code == 500 and "cannot load model 'sam-vit-h'" in answer.json()["error"]
    assert "unisam weights pull sam-vit-h" in answer.json()["error"]
    health = client.get("/health").json()
    assert set(health.pop("caches")) == {"images"}  # no embedding cache without a model
    assert health == {
        "status": "UP", "model_class": "UnisamBackend", "model": "sam-vit-h", "model_loaded": False
    }


def test_model_from_an_export_directory(host, oracle):
    directory = get_card("unisam-tiny").bundled  # a directory in `unisam export`'s layout
    client = TestClient(create_app(make_backend(host, model=str(directory))))
    assert client.post("/setup", json=SETUP).json() == {"model_version": directory.name}
    (region,) = client.post("/predict", json=INTERACTIVE).json()["results"][0]["result"]
    regions = INTERACTIVE["params"]["context"]["result"]
    expected = unisam.segment(IMAGE, **pixel_prompt(regions, SIZE), model=oracle)
    assert np.array_equal(decode_brush(region), expected.masks[0])


def test_webhook_events(client):
    event = load_fixture("webhook_annotation_created.json")
    answer = client.post("/webhook", json=event)
    assert answer.status_code == 201
    # the annotation's brush region (with the task's image) became one example for auto-labeling
    assert answer.json() == {"status": "ok", "result": {"trained": False, "examples": 1, "model_version": "unisam-tiny"}}
    for action in ("START_TRAINING", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"):
        assert client.post("/webhook", json={"action": action, "project": event["project"]}).status_code == 201
    assert client.post("/webhook", json={"action": "TASKS_CREATED"}).json() == {"status": "Unknown event"}


def test_basic_auth(host):
    client = TestClient(create_app(make_backend(host, basic_auth=("labelstudio", "s3cret"))))
    assert client.get("/health").status_code == 401
    assert client.get("/health", auth=("labelstudio", "wrong")).status_code == 401
    assert client.post("/setup", json=SETUP, auth=("other", "s3cret")).status_code == 401
    assert client.get("/health", auth=("labelstudio", "s3cret")).json()["status"] == "UP"
    assert client.post("/setup", json=SETUP, auth=("labelstudio", "s3cret")).status_code == 200


def test_concurrent_annotators_share_one_model_and_cache(host, oracle):
    """Nine simultaneous clicks on three images: every answer is right, each image is encoded once."""
    with BackendServer(make_backend(host)) as server:
        predictor = server.backend.predictor
        predictor.cache.clear()
        runs = predictor.encoder_runs
        jobs = [(url, keypoint(*DISKS[i % 3][:2], SIZE)) for url in OTHERS for i in range(3)]

        def click(job):
            url, region = job
            answer = requests.post(server.url + "/predict", json=interactive([region], url), timeout=60)
            return decode_brush(answer.json()["results"][0]["result"][0])

        with ThreadPoolExecutor(len(jobs)) as pool:
            masks = list(pool.map(click, jobs))
        for (url, region), mask in zip(jobs, masks, strict=True):
            expected = unisam.segment(OTHERS[url], **pixel_prompt([region], SIZE), model=oracle).masks[0]
            assert np.array_equal(mask, expected)
        assert predictor.encoder_runs == runs + len(OTHERS)


def test_console_script_serves_with_settings_from_the_environment(host):
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": host.url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "UNISAM_MODEL": "unisam-tiny",
        "UNISAM_EVERYTHING_PARAMS": '{"points_per_side": 8}',
        "LOG_LEVEL": "WARNING",
    }
    command = [str(Path(sys.executable).parent / "unisam-labelstudio"), "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                if health["model_loaded"]:  # preloaded in the background after startup
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        answer = requests.post(f"http://127.0.0.1:{port}/predict", json=BATCH, timeout=60).json()
        assert answer["results"][0]["model_version"] == "unisam-tiny"
    finally:
        process.terminate()
        process.wait(timeout=20)
    bad = subprocess.run(command, env={**env, "UNISAM_EVERYTHING_PARAMS": "{oops"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "UNISAM_EVERYTHING_PARAMS is not valid JSON" in bad.stderr
    bad = subprocess.run([*command, "--model", "nope"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model 'nope'" in bad.stderr
