"""The backend served for real under concurrent load (benchmarks/ls_load.py at a small size): every
well-formed request answered with the core's mask, the malformed one with its 400, caches within limits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import unisam
from ls_helpers import decode_brush, pixel_prompt

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
try:
    import ls_load
finally:
    sys.path.pop(0)

REQUESTS, IMAGES = 40, 4


@pytest.fixture(scope="module")
def report() -> ls_load.LoadReport:
    """Two waves of 40 requests at once on 4 images; caches for 3 images and 3 embeddings."""
    return ls_load.run(requests=REQUESTS, images=IMAGES, image_cache_mb=2.7, embedding_cache_mb=0.4, waves=2)


def test_every_good_request_gets_the_core_mask(report):
    assert report.errors == []
    oracle = unisam.load_model("unisam-tiny")
    size = (ls_load.WIDTH, ls_load.HEIGHT)
    for i in report.good:
        job = report.jobs[i]
        (prediction,) = report.answers[i]["results"]
        (region,) = prediction["result"]
        expected = unisam.segment(report.scenes[job.scene].image, **pixel_prompt([job.region], size), model=oracle)
        assert np.array_equal(decode_brush(region), expected.masks[0]), f"request {i}"
        assert region["score"] == pytest.approx(float(expected.scores[0]), abs=1e-6)
    assert len(report.good) == 2 * (REQUESTS - 1)


def test_the_malformed_request_gets_its_error_and_disturbs_nothing(report):
    bad = [i for i, job in enumerate(report.jobs) if job.scene < 0]
    assert bad == [REQUESTS // 2, REQUESTS + REQUESTS // 2]
    for i in bad:
        assert report.statuses[i] == 400 and ls_load.BAD_MESSAGE in report.answers[i]["error"]
    # requests sent at the same moment on both sides of it got their answers (checked above)
    assert all(report.statuses[i] == 200 for i in (bad[0] - 1, bad[0] + 1))


def test_caches_stay_within_their_limits_and_are_hit_and_evicted(report):
    for name, cache in report.caches.items():
        assert cache["bytes"] <= cache["max_bytes"] and 0 < cache["entries"] <= 3, name
        assert cache["hits"] > 0, name
    assert set(report.caches) == {"images", "embeddings"}
    # more image downloads than images: entries were evicted and fetched again
    assert report.caches["images"]["misses"] > IMAGES
    assert report.caches["embeddings"]["misses"] > IMAGES
    # memory settles: the second wave adds little to what the first one left
    assert report.rss_waves_mib[1] - report.rss_waves_mib[0] < 64, report.rss_waves_mib
