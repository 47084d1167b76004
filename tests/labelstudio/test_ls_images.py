"""Task image fetching against local HTTP servers: URL forms, where the token goes, clear errors, caching."""

from __future__ import annotations

import numpy as np
import pytest
from ls_helpers import TOKEN, ImageHost, disks_image, free_port, png_bytes

from unisam_labelstudio.images import ImageError, TaskImages

IMAGE = disks_image(width=64, height=48)[0]
UPLOAD = "/data/upload/3/ab12-disks.png"


@pytest.fixture
def hosts():
    """A stand-in Label Studio (uploads, local files, a private path) and another image host."""
    label_studio = ImageHost(
        {
            UPLOAD: png_bytes(IMAGE),
            "/data/local-files/?d=images/disks.png": png_bytes(IMAGE[::-1]),
            "/private/disks.png": png_bytes(IMAGE),
            "/data/upload/3/private.png": png_bytes(IMAGE),
            "/data/upload/3/broken.png": b"\x89PNG\r\n\x1a\nnot really",
        }
    )
    other = ImageHost({"/public/disks.png": png_bytes(IMAGE[:, ::-1]), "/private/disks.png": png_bytes(IMAGE)})
    with label_studio, other:
        yield label_studio, other


def test_url_forms_and_the_token_goes_only_to_label_studio(hosts):
    label_studio, other = hosts
    images = TaskImages()
    load = lambda url: images.load(url, hostname=label_studio.url, token=TOKEN, task_id=7)  # noqa: E731
    np.testing.assert_array_equal(load(UPLOAD), IMAGE)
    np.testing.assert_array_equal(load("/data/local-files/?d=images/disks.png"), IMAGE[::-1])
    np.testing.assert_array_equal(load(other.url + "/public/disks.png"), IMAGE[:, ::-1])
    np.testing.assert_array_equal(load(label_studio.url + "/private/disks.png"), IMAGE)  # absolute, on Label Studio
    assert (UPLOAD, f"Token {TOKEN}") in label_studio.requests
    assert all(auth == f"Token {TOKEN}" for _, auth in label_studio.requests)
    assert other.requests == [("/public/disks.png", None)]
    with pytest.raises(ImageError, match="HTTP 401") as error:
        load(other.url + "/private/disks.png")  # another host never gets the Label Studio token
    assert "LABEL_STUDIO_API_KEY" not in str(error.value) and other.requests[-1] == ("/private/disks.png", None)


def test_repeated_loads_come_from_memory_within_the_budget(hosts):
    label_studio, _ = hosts
    images = TaskImages(max_bytes=IMAGE.nbytes)  # room for one image
    for url in (UPLOAD, UPLOAD, "/data/local-files/?d=images/disks.png", UPLOAD):
        first = images.load(url, hostname=label_studio.url, token=TOKEN)
    assert not first.flags.writeable
    fetched = [path for path, _ in label_studio.requests if path.startswith("/data/")]
    # the first upload, the local file, then the upload again (evicted by the local file)
    assert fetched.count(UPLOAD) == 2 and len(fetched) == 3


@pytest.mark.parametrize(
    "url, token, message",
    [
        ("/data/upload/3/gone.png", TOKEN, "image '/data/upload/3/gone.png' of task 7 failed: HTTP 404"),
        ("/data/upload/3/private.png", "wrong", "HTTP 401 Unauthorized from http.*LABEL_STUDIO_API_KEY"),
        ("/data/upload/3/broken.png", TOKEN, "cannot read image '/data/upload/3/broken.png' of task 7"),
        ("/data/upload/3/ab12-disks.png", "", "set LABEL_STUDIO_API_KEY"),
        ("", TOKEN, "task 7 has no image URL"),
        ("disks.png", TOKEN, "cannot fetch image 'disks.png' of task 7"),
    ],
)
def test_fetch_errors_are_clear(hosts, url, token, message, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_ACCESS_TOKEN", raising=False)
    label_studio, _ = hosts
    with pytest.raises(ImageError, match=message):
        TaskImages().load(url, hostname=label_studio.url, token=token, task_id=7)


def test_unreachable_label_studio(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_HOST", raising=False)
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ImageError, match=f"cannot connect.*Set LABEL_STUDIO_URL \\(now '{nowhere}'\\)"):
        TaskImages().load(UPLOAD, hostname=nowhere, token=TOKEN, task_id=1)
    with pytest.raises(ImageError, match="cannot resolve.*LABEL_STUDIO_URL"):
        TaskImages().load(UPLOAD, hostname=None, token=TOKEN, task_id=1)
