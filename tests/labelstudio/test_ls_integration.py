"""End to end against a real Label Studio 1.23 server: connect the backend, label interactively through
Label Studio's interactive-annotating API, retrieve batch predictions through the Data Manager action.

Set UNISAM_LS_RECORD=1 to (re)write the payload fixtures that test_ls_app.py replays.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest
import requests
import unisam
from ls_helpers import (
    EVERYTHING,
    FIXTURES,
    ImageHost,
    decode_brush,
    disks_image,
    iou,
    keypoint,
    load_fixture,
    pixel_prompt,
    png_bytes,
    readme_config,
    rectangle,
)

from unisam_labelstudio import ImageError, Settings, UnisamBackend

RECORD = os.environ.get("UNISAM_LS_RECORD") == "1"


@dataclass
class Project:
    id: int
    ml_id: int
    tasks: dict[str, int]  # upload, local, missing, remote, forged -> task id
    images: dict[str, tuple]  # name -> (image, ground-truth masks, disks)
    host: ImageHost  # the allowed remote host
    forbidden: ImageHost  # a host the backend may not fetch from (the "forged" task's image)


@pytest.fixture(scope="module")
def oracle() -> unisam.Predictor:
    """A separate predictor of the same model, to compute the expected masks independently."""
    return unisam.load_model("unisam-tiny")


@pytest.fixture(scope="module")
def project(label_studio, backend_server, remote_host):
    ls = label_studio
    images = {"upload": disks_image(), "local": disks_image(shift=10), "remote": disks_image(shift=-10)}
    (ls.files / "images" / "local.png").write_bytes(png_bytes(images["local"][0]))
    host = remote_host
    host.files["/remote.png"] = png_bytes(images["remote"][0])
    with ImageHost({"/forged.png": png_bytes(images["remote"][0])}) as forbidden:
        new = {"title": "unisam test", "label_config": readme_config()}
        pid = ls.api("POST", "/api/projects", json=new).json()["id"]
        ls.api(
            "POST",
            "/api/storages/localfiles",
            json={"project": pid, "path": str(ls.files / "images"), "use_blob_urls": True, "title": "images"},
        )
        file = {"file": ("disks.png", png_bytes(images["upload"][0]), "image/png")}
        upload = ls.api("POST", f"/api/projects/{pid}/import?return_task_ids=true", files=file).json()["task_ids"][0]
        others = [
            {"data": {"image": "/data/local-files/?d=images/local.png"}},
            {"data": {"image": "/data/local-files/?d=images/missing.png"}},
            {"data": {"image": host.url + "/remote.png"}},
            {"data": {"image": forbidden.url + "/forged.png"}},
        ]
        ids = ls.api("POST", f"/api/projects/{pid}/import?return_task_ids=true", json=others).json()["task_ids"]
        ml = ls.api(
            "POST",
            "/api/ml",
            json={
                "url": backend_server.url,
                "project": pid,
                "is_interactive": True,
                "title": "unisam",
                "extra_params": {"label": "Nucleus", **EVERYTHING},
            },
        ).json()
        assert ml["readable_state"] == "Connected" and ml["model_version"] == "unisam-tiny", ml
        names = ["upload", "local", "missing", "remote", "forged"]
        tasks = dict(zip(names, [upload, *sorted(ids)], strict=True))
        yield Project(pid, ml["id"], tasks, images, host, forbidden)


def interactive(ls, project: Project, task: str, regions: list[dict]) -> dict:
    body = {"task": project.tasks[task], "context": {"result": regions}}
    return ls.api("POST", f"/api/ml/{project.ml_id}/interactive-annotating", json=body).json()


def posted(backend_server, path: str) -> list[dict]:
    return [json.loads(body) for method, p, body in backend_server.recorder.calls if method == "POST" and p == path]


def test_connect_sends_setup_with_project_and_extra_params(project, backend_server):
    setup = posted(backend_server, "/setup")[-1]
    assert setup["project"].split(".")[0] == str(project.id)
    assert setup["extra_params"] == {"label": "Nucleus", **EVERYTHING}
    assert "<BrushLabels" in setup["schema"]


def test_clicks_give_the_core_mask_and_reuse_the_embedding(label_studio, project, backend_server, oracle):
    image, truth, disks = project.images["upload"]
    size = (image.shape[1], image.shape[0])
    predictor = backend_server.backend.predictor
    predictor.cache.clear()  # other tests of this session may have embedded the same image
    runs = predictor.encoder_runs
    cx, cy, r = disks[1]
    clicks = [keypoint(cx, cy, size)]
    steps = [
        clicks,
        clicks + [keypoint(cx + r / 2, cy, size), keypoint(cx + 2 * r, cy, size, positive=False)],
        clicks + [rectangle((cx - r - 3, cy - r - 3, cx + r + 3, cy + r + 3), size, label="Cell")],
    ]
    for step, regions in enumerate(steps):
        answer = interactive(label_studio, project, "upload", regions)
        assert "errors" not in answer, answer
        (region,) = answer["data"]["result"]
        assert (region["type"], region["from_name"], region["to_name"]) == ("brushlabels", "brush", "image")
        assert region["value"]["brushlabels"] == ["Cell" if step == 2 else "Nucleus"]
        mask = decode_brush(region)
        expected = unisam.segment(image, **pixel_prompt(regions, size), model=oracle)
        assert np.array_equal(mask, expected.masks[0])
        assert region["score"] == pytest.approx(float(expected.scores[0]), abs=1e-6)
        assert iou(mask, truth[1]) > (0.5 if step < 2 else 0.8)
        assert predictor.encoder_runs == runs + 1  # only the first click ran the encoder
    # what the frontend does with an accepted suggestion: save it as an annotation
    label_studio.api("POST", f"/api/tasks/{project.tasks['upload']}/annotations", json={"result": [region]})
    if RECORD:
        (FIXTURES / "predict_interactive.json").write_text(json.dumps(posted(backend_server, "/predict")[-1], indent=1))


def test_local_storage_and_remote_images(label_studio, project, oracle):
    for name in ("local", "remote"):
        image, truth, disks = project.images[name]
        size = (image.shape[1], image.shape[0])
        regions = [keypoint(*disks[0][:2], size)]
        (region,) = interactive(label_studio, project, name, regions)["data"]["result"]
        expected = unisam.segment(image, **pixel_prompt(regions, size), model=oracle)
        assert np.array_equal(decode_brush(region), expected.masks[0])
    fetched = [auth for path, auth in project.host.requests if path == "/remote.png"]
    assert fetched and all(auth is None for auth in fetched)  # the token goes only to Label Studio


def test_personal_access_token(label_studio, project, oracle):
    """Label Studio 1.2x's personal access tokens (JWT refresh tokens) work as LABEL_STUDIO_API_KEY."""
    pat = label_studio.api("POST", "/api/token/").json()["token"]
    backend = UnisamBackend(Settings(model="unisam-tiny", label_studio_url=label_studio.url, api_key=pat))
    image, _, disks = project.images["upload"]
    size = (image.shape[1], image.shape[0])
    regions = [keypoint(*disks[2][:2], size)]
    task = {
        "id": project.tasks["upload"],
        "data": {"image": label_studio.api("GET", f"/api/tasks/{project.tasks['upload']}").json()["data"]["image"]},
    }
    (prediction,) = backend.predict([task], {"result": regions}, label_config=readme_config())
    expected = unisam.segment(image, **pixel_prompt(regions, size), model=oracle)
    assert np.array_equal(decode_brush(prediction["result"][0]), expected.masks[0])


def retrieve(ls, project: Project, names: list[str]) -> None:
    selection = {"all": False, "included": [project.tasks[n] for n in names]}
    action = f"/api/dm/actions?id=retrieve_tasks_predictions&project={project.id}"
    ls.api("POST", action, json={"selectedItems": selection})


def stored(ls, project: Project, name: str) -> list[dict]:
    return ls.api("GET", f"/api/predictions?task={project.tasks[name]}").json()


def test_retrieve_predictions_stores_segment_everything(label_studio, project, backend_server, oracle):
    retrieve(label_studio, project, ["upload"])
    if RECORD:
        (FIXTURES / "predict_batch.json").write_text(json.dumps(posted(backend_server, "/predict")[-1], indent=1))
    retrieve(label_studio, project, ["local", "missing", "remote", "forged"])
    for name in ("upload", "local", "remote"):
        image, truth, _ = project.images[name]
        (prediction,) = stored(label_studio, project, name)
        expected = unisam.segment_everything(image, model=oracle, **EVERYTHING)
        assert prediction["model_version"] == "unisam-tiny" and len(expected) >= 3
        masks = np.stack([decode_brush(region) for region in prediction["result"]])
        assert np.array_equal(masks, expected.masks)
        assert {region["value"]["brushlabels"][0] for region in prediction["result"]} == {"Nucleus"}
        assert prediction["score"] == pytest.approx(float(expected.scores.mean()), abs=1e-6)
        inside = (masks[:, None] & truth[None]).sum((2, 3)) / masks.sum((1, 2))[:, None]  # (instances, disks)
        assert (inside.max(1) > 0.9).all() and (inside.max(0) > 0).all()  # on the disks, every disk found
    assert stored(label_studio, project, "missing") == []  # its error entry is skipped by Label Studio
    assert stored(label_studio, project, "forged") == [] and project.forbidden.requests == []


def test_bad_input_gets_clear_errors_and_serving_goes_on(label_studio, project, backend_server):
    interactive_body = posted(backend_server, "/predict")[0]
    image, _, disks = project.images["upload"]
    size = (image.shape[1], image.shape[0])

    def predict(**changes):
        return requests.post(backend_server.url + "/predict", json={**interactive_body, **changes}, timeout=60)

    cases = [
        (dict(label_config='<View><Image name="image" value="$image"/></View>'), 400, "no <BrushLabels>"),
        (dict(params={"context": {"result": []}}), 400, "no keypoint and no rectangle"),
        (
            dict(params={"context": {"result": [{**keypoint(10, 10, size), "value": {"x": 120, "y": 5}}]}}),
            400,
            "outside 0-100",
        ),
    ]
    missing = {
        **interactive_body["tasks"][0],
        "id": project.tasks["missing"],
        "data": {"image": "/data/local-files/?d=images/missing.png"},
    }
    cases.append((dict(tasks=[missing]), 502, "HTTP 404"))
    for changes, status, message in cases:
        answer = predict(**changes)
        assert answer.status_code == status and message in answer.json()["error"], answer.text
        assert predict().status_code == 200  # still serving
    # through Label Studio: its errors list carries the status
    click = [keypoint(20, 20, size)]
    for task, regions, status in [("missing", click, "502"), ("upload", [], "400"), ("forged", click, "403")]:
        answer = interactive(label_studio, project, task, regions)
        assert "data" not in answer and status in answer["errors"][0], answer
    assert project.forbidden.requests == []  # a task image on a host that is not allowed is never fetched
    # a wrong token: Label Studio answers 401, the backend explains which setting to fix
    wrong = UnisamBackend(Settings(model="unisam-tiny", label_studio_url=label_studio.url, api_key="not-a-token"))
    with pytest.raises(ImageError, match="HTTP 401.*LABEL_STUDIO_API_KEY"):
        wrong.predict(
            interactive_body["tasks"],
            {"result": [keypoint(*disks[0][:2], size)]},
            label_config=interactive_body["label_config"],
        )
    # a misconfigured connection is refused when it is made
    bad = {"url": backend_server.url, "project": project.id, "title": "bad", "extra_params": {"label": "Dog"}}
    refused = label_studio.session.post(label_studio.url + "/api/ml", json=bad, timeout=60)
    assert refused.status_code == 400 and "400" in refused.text, refused.text
    assert requests.get(backend_server.url + "/health", timeout=5).json()["status"] == "UP"


def test_annotation_events_reach_the_webhook(project, backend_server):
    deadline = time.monotonic() + 20
    while not any(e.get("action") == "ANNOTATION_CREATED" for e in posted(backend_server, "/webhook")):
        assert time.monotonic() < deadline, "no ANNOTATION_CREATED webhook"
        time.sleep(0.2)
    if RECORD:
        event = next(e for e in posted(backend_server, "/webhook") if e.get("action") == "ANNOTATION_CREATED")
        (FIXTURES / "webhook_annotation_created.json").write_text(json.dumps(event, indent=1))


def test_recorded_payloads_keep_the_fixture_layout(backend_server):
    """Label Studio's payloads have the fields of the recorded fixtures the unit tests replay."""
    recorded = {
        "setup.json": posted(backend_server, "/setup")[0],
        "predict_interactive.json": next(p for p in posted(backend_server, "/predict") if p["params"]["context"]),
        "predict_batch.json": next(p for p in posted(backend_server, "/predict") if not p["params"]["context"]),
    }
    if RECORD:
        (FIXTURES / "setup.json").write_text(json.dumps(recorded["setup.json"], indent=1))
    for name, payload in recorded.items():
        fixture = load_fixture(name)
        assert set(payload) == set(fixture), name
        if "params" in fixture:
            assert set(payload["params"]) == set(fixture["params"])
            assert set(payload["tasks"][0]) == set(fixture["tasks"][0])
