"""The zoo model source: registered from the installed package (``unisam_fiftyone.register_zoo_source``,
which in CI is the checkout, installed editable) or from an archive URL (served here on localhost, the
way a release archive would be), loaded with ``foz.load_zoo_model`` and run with ``apply_model``."""

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import fiftyone as fo
import fiftyone.zoo as foz
import pytest
from fo_scenes import REPO, assert_matches_core, box_prompts, point_prompts

import unisam
import unisam_fiftyone

EVERYTHING_PARAMS = dict(points_per_side=8, pred_iou_thresh=0.6, stability_score_thresh=0.7)


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory):
    """The package's zoo/ directory as a zip archive behind a local HTTP server."""
    folder = tmp_path_factory.mktemp("served")
    shutil.make_archive(str(folder / "unisam_zoo"), "zip", unisam_fiftyone.zoo_dir())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/unisam_zoo.zip"
    server.shutdown()


@pytest.fixture
def no_sources():
    """Each test starts and ends with no zoo source registered."""
    for url in foz.list_zoo_model_sources():
        foz.delete_zoo_model_source(url)
    yield
    for url in foz.list_zoo_model_sources():
        foz.delete_zoo_model_source(url)


def check_apply_model(dataset, scenes) -> None:
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


def test_the_package_ships_the_checkouts_zoo_source():
    # The installed unisam_fiftyone is this checkout's (editable install), and its zoo/ is complete.
    assert unisam_fiftyone.zoo_dir() == REPO / "plugins" / "fiftyone" / "unisam_fiftyone" / "zoo"
    assert {"manifest.json", "__init__.py"} <= {p.name for p in unisam_fiftyone.zoo_dir().iterdir()}


def test_register_from_the_installed_package(no_sources, dataset, scenes):
    url = unisam_fiftyone.register_zoo_source()
    assert url == unisam_fiftyone.zoo_dir().as_uri() and url.startswith("file://")
    assert foz.list_zoo_model_sources() == [url]
    assert "unisam" in foz.list_zoo_models()
    assert "unisam" in foz.list_zoo_models(source=url)
    foz.register_zoo_model_source(url)  # FiftyOne's own call now finds it registered: a no-op
    check_apply_model(dataset, scenes)
    # Registering again refreshes the copied module (an upgraded package or an edited checkout).
    copied = Path(fo.config.model_zoo_dir) / "unisam_zoo" / "__init__.py"
    assert copied.read_text() == (unisam_fiftyone.zoo_dir() / "__init__.py").read_text()
    copied.write_text("raise ImportError('stale copy')\n")
    assert unisam_fiftyone.register_zoo_source() == url
    assert foz.list_zoo_model_sources() == [url]
    assert copied.read_text() == (unisam_fiftyone.zoo_dir() / "__init__.py").read_text()
    assert isinstance(foz.load_zoo_model("unisam"), fo.core.models.Model)
    foz.delete_zoo_model_source(url)
    assert "unisam" not in foz.list_zoo_models()


def test_register_from_the_command_line(no_sources):
    done = subprocess.run(
        [sys.executable, "-m", "unisam_fiftyone"], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )
    assert done.returncode == 0, done.stderr
    url = unisam_fiftyone.zoo_dir().as_uri()
    assert done.stdout.strip().splitlines()[-1] == url
    assert foz.list_zoo_model_sources() == [url]


def test_another_source_of_the_same_name_is_kept_unless_overwrite(no_sources, archive_url):
    foz.register_zoo_model_source(archive_url)
    with pytest.raises(ValueError, match="already registered from http://127.0.0.1"):
        unisam_fiftyone.register_zoo_source()
    assert foz.list_zoo_model_sources() == [archive_url]
    url = unisam_fiftyone.register_zoo_source(overwrite=True)
    assert foz.list_zoo_model_sources() == [url]


def test_apply_model_from_an_archive_url(no_sources, archive_url, dataset, scenes):
    foz.register_zoo_model_source(archive_url)
    assert archive_url in foz.list_zoo_model_sources()
    assert "unisam" in foz.list_zoo_models()
    check_apply_model(dataset, scenes)
