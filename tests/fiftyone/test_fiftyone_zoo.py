"""The remote zoo model source: registered from an archive URL (served here on localhost, the way a
release archive would be), loaded with ``foz.load_zoo_model`` and run with ``apply_model``."""

import functools
import http.server
import shutil
import threading

import fiftyone.zoo as foz
import pytest
from fo_scenes import REPO, assert_matches_core, box_prompts, point_prompts

import unisam

EVERYTHING_PARAMS = dict(points_per_side=8, pred_iou_thresh=0.6, stability_score_thresh=0.7)


@pytest.fixture(scope="module")
def source_url(tmp_path_factory):
    """The plugin's zoo/ directory as a zip archive behind a local HTTP server."""
    folder = tmp_path_factory.mktemp("served")
    shutil.make_archive(str(folder / "unisam_zoo"), "zip", REPO / "plugins" / "fiftyone" / "zoo")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/unisam_zoo.zip"
    server.shutdown()


def test_apply_model_with_prompt_fields_and_without(source_url, dataset, scenes):
    foz.register_zoo_model_source(source_url)
    assert source_url in foz.list_zoo_model_sources()
    assert "unisam" in foz.list_zoo_models()
    model = foz.load_zoo_model("unisam")
    dataset.apply_model(model, label_field="boxes", prompt_field="gt")
    dataset.apply_model(model, label_field="clicks", point_prompt_field="kp")
    auto = foz.load_zoo_model("unisam", **EVERYTHING_PARAMS)
    dataset.apply_model(auto, label_field="auto")
    for sample in dataset:
        masks = dict(scenes)[sample.filepath]
        boxes, points = box_prompts(masks), point_prompts(masks)
        assert_matches_core(sample.boxes, unisam.segment(sample.filepath, boxes), [p.label for p in boxes])
        assert_matches_core(sample.clicks, unisam.segment(sample.filepath, points), [p.label for p in points])
        result = unisam.segment_everything(sample.filepath, **EVERYTHING_PARAMS)
        assert_matches_core(sample.auto, result, [None] * len(result))
