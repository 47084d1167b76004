"""Task image fetching against local HTTP servers: URL forms, where the token goes, clear errors, caching,
and no server-side request forgery (only Label Studio, allowed hosts and the local-files root)."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from ls_helpers import TOKEN, ImageHost, disks_image, free_port, keypoint, load_fixture, png_bytes

from unisam_labelstudio import Settings, UnisamBackend, create_app
from unisam_labelstudio.images import AllowedHost, FetchPolicy, ForbiddenURL, ImageError, TaskImages, _origin

IMAGE = disks_image(width=64, height=48)[0]
UPLOAD = "/data/upload/3/ab12-disks.png"
SECRET = "/latest/meta-data/iam/security-credentials/role"  # what a forgery would be after


@pytest.fixture
def hosts():
    """A stand-in Label Studio (uploads, local files, a private path, the presign endpoint), another
    image host the operator allows, a bucket that presigned URLs point to, and a forbidden host (a
    stand-in for e.g. the cloud metadata service) that must never get a request."""
    bucket = ImageHost({"/key.png?X-Amz-Signature=abc": png_bytes(IMAGE[::-1, ::-1])})
    forbidden = ImageHost({SECRET: b"secret", "/disks.png": png_bytes(IMAGE)})
    fileuri = base64.urlsafe_b64encode(b"s3://bucket/key.png").decode()
    label_studio = ImageHost(
        {
            UPLOAD: png_bytes(IMAGE),
            "/data/local-files/?d=images/disks.png": png_bytes(IMAGE[::-1]),
            "/private/disks.png": png_bytes(IMAGE),
            "/data/upload/3/private.png": png_bytes(IMAGE),
            "/data/upload/3/broken.png": b"\x89PNG\r\n\x1a\nnot really",
        },
        redirects={
            f"/tasks/7/presign/?fileuri={fileuri}": bucket.url + "/key.png?X-Amz-Signature=abc",
            f"/tasks/7/resolve/?fileuri={fileuri}": bucket.url + "/key.png?X-Amz-Signature=abc",
            "/moved.png": UPLOAD,  # a redirect within Label Studio keeps the token
        },
    )
    other = ImageHost(
        {"/public/disks.png": png_bytes(IMAGE[:, ::-1]), "/private/disks.png": png_bytes(IMAGE)},
        redirects={
            "/to-forbidden.png": forbidden.url + SECRET,
            "/to-metadata.png": "http://169.254.169.254" + SECRET,
            "/to-file.png": "file:///etc/passwd",
            "/to-public.png": "/public/disks.png",
            "/to-label-studio.png": label_studio.url + UPLOAD,
        },
    )
    with label_studio, other, bucket, forbidden:
        yield label_studio, other, bucket, forbidden


def allowing(other: ImageHost, **kwargs) -> TaskImages:
    return TaskImages(policy=FetchPolicy.create([other.url.split("//")[1]], **kwargs))


def test_url_forms_and_the_token_goes_only_to_label_studio(hosts):
    label_studio, other, bucket, _ = hosts
    images = allowing(other)
    load = lambda url: images.load(url, hostname=label_studio.url, token=TOKEN, task_id=7)  # noqa: E731
    np.testing.assert_array_equal(load(UPLOAD), IMAGE)
    np.testing.assert_array_equal(load("upload/3/ab12-disks.png"), IMAGE)
    np.testing.assert_array_equal(load("/data/local-files/?d=images/disks.png"), IMAGE[::-1])
    np.testing.assert_array_equal(load(other.url + "/public/disks.png"), IMAGE[:, ::-1])
    np.testing.assert_array_equal(load(label_studio.url + "/private/disks.png"), IMAGE)  # absolute, on Label Studio
    np.testing.assert_array_equal(load(label_studio.url + "/moved.png"), IMAGE)
    assert (UPLOAD, f"Token {TOKEN}") in label_studio.requests
    assert all(auth == f"Token {TOKEN}" for _, auth in label_studio.requests)
    assert other.requests == [("/public/disks.png", None)]
    with pytest.raises(ImageError, match="HTTP 401") as error:
        load(other.url + "/private/disks.png")  # another host never gets the Label Studio token
    assert "LABEL_STUDIO_API_KEY" not in str(error.value) and other.requests[-1] == ("/private/disks.png", None)
    assert bucket.requests == []


@pytest.mark.parametrize("path", ["presign", "resolve"])
def test_cloud_storage_urls_that_label_studio_resolves_work_without_the_token_leaving_it(hosts, path):
    """s3:// URIs go through Label Studio's presign endpoint; the task URLs Label Studio itself writes
    for cloud storage (/tasks/<id>/resolve/?fileuri=) too. Label Studio answers 303 to a presigned URL on
    a host nobody listed, which is followed without the token."""
    label_studio, other, bucket, _ = hosts
    fileuri = base64.urlsafe_b64encode(b"s3://bucket/key.png").decode()
    url = "s3://bucket/key.png" if path == "presign" else f"/tasks/7/resolve/?fileuri={fileuri}"
    image = TaskImages().load(url, hostname=label_studio.url, token=TOKEN, task_id=7)
    np.testing.assert_array_equal(image, IMAGE[::-1, ::-1])
    assert label_studio.requests == [(f"/tasks/7/{path}/?fileuri={fileuri}", f"Token {TOKEN}")]
    assert bucket.requests == [("/key.png?X-Amz-Signature=abc", None)]


def test_redirects_of_an_allowed_host_that_stay_allowed_are_followed(hosts):
    label_studio, other, _, _ = hosts
    images = allowing(other)
    np.testing.assert_array_equal(images.load(other.url + "/to-public.png", hostname=label_studio.url, token=TOKEN),
                                  IMAGE[:, ::-1])
    np.testing.assert_array_equal(
        images.load(other.url + "/to-label-studio.png", hostname=label_studio.url, token=TOKEN), IMAGE
    )
    assert other.requests == [("/to-public.png", None), ("/public/disks.png", None), ("/to-label-studio.png", None)]


@pytest.mark.parametrize(
    "url, message",
    [
        ("{forbidden}" + SECRET, "is neither the Label Studio origin .* nor in UNISAM_ALLOWED_IMAGE_HOSTS"),
        ("{forbidden}/disks.png", "is neither the Label Studio origin"),
        ("http://169.254.169.254" + SECRET, "169.254.169.254 is neither the Label Studio origin"),
        ("http://metadata.google.internal/computeMetadata/v1/", "is neither the Label Studio origin"),
        ("{label_studio_as_user}@{forbidden_netloc}" + SECRET, "is neither the Label Studio origin"),
        ("https://{label_studio_netloc}" + UPLOAD, "is neither the Label Studio origin"),  # not the same scheme
        # urllib3 (what requests connects with) reads the host before the backslash, urlsplit after the @
        ("http://{forbidden_netloc}\\@{label_studio_netloc}" + UPLOAD, "its host is ambiguous"),
        ("http://{forbidden_netloc}\\@{other_netloc}/public/disks.png", "its host is ambiguous"),
        ("file:///etc/passwd", "only http\\(s\\) URLs, Label Studio paths and s3/gs/azure-blob URIs"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "only http\\(s\\) URLs"),
        ("/data/local-files/?d=../../../../etc/passwd", "leads outside the local-files root"),
        ("/data/local-files/?d=..%2F..%2Fetc%2Fpasswd", "leads outside the local-files root"),
        ("/data/local-files/?d=/etc/passwd", "leads outside the local-files root"),
        ("/data/local-files/?d=images/../../outside.png", "leads outside the local-files root"),
        ("/data/local-files/?d=images/escape.png", "outside LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"),  # a symlink
        ("{other}/to-forbidden.png", "redirected to 'http://127.0.0.1:.*', which is neither Label Studio"),
        ("{other}/to-metadata.png", "redirected to 'http://169.254.169.254/latest.*not followed"),
        ("{other}/to-file.png", "redirected to 'file:///etc/passwd'"),
    ],
)
def test_forged_urls_are_refused_without_a_request(hosts, tmp_path, url, message):
    label_studio, other, bucket, forbidden = hosts
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(png_bytes(IMAGE))
    (root / "images" / "escape.png").symlink_to(tmp_path / "outside.png")
    url = url.format(
        forbidden=forbidden.url,
        forbidden_netloc=forbidden.url.split("//")[1],
        label_studio_as_user=label_studio.url,
        label_studio_netloc=label_studio.url.split("//")[1],
        other=other.url,
        other_netloc=other.url.split("//")[1],
    )
    images = allowing(other, local_root=str(root))
    start = time.perf_counter()
    with pytest.raises(ForbiddenURL, match=message) as error:
        images.load(url, hostname=label_studio.url, token=TOKEN, task_id=7)
    assert time.perf_counter() - start < 2  # refused, not a timed-out connection
    assert "\n" not in str(error.value) and str(error.value).startswith("refused image")
    assert forbidden.requests == [] and bucket.requests == [] and label_studio.requests == []
    assert all(auth is None for _, auth in other.requests)


def test_local_files_are_read_from_the_root_and_only_there(hosts, tmp_path):
    label_studio, _, _, _ = hosts
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "here.png").write_bytes(png_bytes(IMAGE[:, ::-1]))
    images = TaskImages(policy=FetchPolicy.create(local_root=str(tmp_path)))
    load = lambda url: images.load(url, hostname=label_studio.url, token=TOKEN)  # noqa: E731
    np.testing.assert_array_equal(load("/data/local-files/?d=images%2Fhere.png"), IMAGE[:, ::-1])
    np.testing.assert_array_equal(load(label_studio.url + "/data/local-files/?d=images/here.png"), IMAGE[:, ::-1])
    assert label_studio.requests == []  # read from disk
    np.testing.assert_array_equal(load("/data/local-files/?d=images/disks.png"), IMAGE[::-1])  # not there: from LS
    assert label_studio.requests == [("/data/local-files/?d=images/disks.png", f"Token {TOKEN}")]
    # without a root nothing is read from disk, even a file that exists
    with pytest.raises(ImageError, match="HTTP 404"):
        TaskImages().load(f"/data/local-files/?d={tmp_path.relative_to('/')}/images/here.png",
                          hostname=label_studio.url, token=TOKEN)


def test_allowed_host_entries():
    def allows(entry: str, url: str) -> bool:
        return AllowedHost.parse(entry).matches(_origin(url))

    assert allows("images.example.com", "https://images.example.com:8443/a.png")
    assert allows("Images.Example.com:8443", "https://images.example.com:8443/a.png")
    assert not allows("images.example.com:8443", "https://images.example.com/a.png")
    assert allows("https://cdn.example.com", "https://cdn.example.com/a.png")
    assert not allows("https://cdn.example.com", "http://cdn.example.com/a.png")
    assert allows("*.s3.amazonaws.com", "https://bucket.s3.amazonaws.com/a.png")
    assert not allows("*.s3.amazonaws.com", "https://s3.amazonaws.com.evil.net/a.png")
    assert not allows("example.com", "https://images.example.com/a.png")
    assert allows("[::1]:9000", "http://[::1]:9000/a.png")
    for bad in ("http://host/path", "ftp://host", "host:port", ":80"):
        with pytest.raises(ValueError, match="UNISAM_ALLOWED_IMAGE_HOSTS entry"):
            AllowedHost.parse(bad)
    settings = Settings.from_env({"UNISAM_ALLOWED_IMAGE_HOSTS": " a.example.com, *.b.example.com:8080 ,"})
    assert settings.allowed_image_hosts == ("a.example.com", "*.b.example.com:8080")
    with pytest.raises(ValueError, match="entry 'http://x/y' is not a host"):
        Settings.from_env({"UNISAM_ALLOWED_IMAGE_HOSTS": "http://x/y"})
    assert Settings.from_env({"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/srv/files"}).local_files_root == "/srv/files"


def test_the_app_answers_403_for_a_forged_url_and_keeps_serving(hosts):
    label_studio, other, _, forbidden = hosts
    label_studio.files["/data/upload/1/ok.png"] = png_bytes(IMAGE)
    settings = Settings(model="unisam-tiny", label_studio_url=label_studio.url, api_key=TOKEN)
    client = TestClient(create_app(UnisamBackend(settings)))
    body = load_fixture("predict_interactive.json")
    body["params"]["context"] = {"result": [keypoint(20, 20, (64, 48))]}
    for url, status in ((forbidden.url + SECRET, 403), ("/data/upload/1/ok.png", 200)):
        body["tasks"][0]["data"]["image"] = url
        answer = client.post("/predict", json=body)
        assert answer.status_code == status, answer.text
    batch = load_fixture("predict_batch.json")
    batch["tasks"][0]["data"]["image"] = forbidden.url + SECRET
    assert "refused image" in client.post("/predict", json=batch).json()["results"][0]["error"]
    assert forbidden.requests == []


def test_repeated_loads_come_from_memory_within_the_budget(hosts):
    label_studio, _, _, _ = hosts
    images = TaskImages(max_bytes=IMAGE.nbytes)  # room for one image
    for url in (UPLOAD, UPLOAD, "/data/local-files/?d=images/disks.png", UPLOAD):
        first = images.load(url, hostname=label_studio.url, token=TOKEN)
    assert not first.flags.writeable
    fetched = [path for path, _ in label_studio.requests if path.startswith("/data/")]
    # the first upload, the local file, then the upload again (evicted by the local file)
    assert fetched.count(UPLOAD) == 2 and len(fetched) == 3


def test_simultaneous_first_loads_of_one_image_download_it_once(hosts):
    label_studio = hosts[0]
    label_studio.delay_s = 0.3  # the requests overlap
    images, url = TaskImages(), label_studio.url + "/private/disks.png"
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: images.load(url, hostname=label_studio.url, token=TOKEN), range(8)))
    assert all(image is loaded[0] for image in loaded) and len(label_studio.requests) == 1


@pytest.mark.parametrize("sized", [True, False])
def test_downloads_over_the_limit_are_stopped(hosts, sized):
    label_studio = hosts[0]
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    label_studio.files["/data/upload/3/big.png"] = png_bytes(noise)  # ~12 kB: incompressible
    label_studio.sized = sized  # with a Content-Length header, or only counted while streaming
    images = TaskImages(policy=FetchPolicy.create(max_download_mb=0.01))
    with pytest.raises(ImageError, match="big.png' of task 7: it is larger than UNISAM_MAX_DOWNLOAD_MB \\(0.01 MB\\)"):
        images.load("/data/upload/3/big.png", hostname=label_studio.url, token=TOKEN, task_id=7)
    np.testing.assert_array_equal(images.load(UPLOAD, hostname=label_studio.url, token=TOKEN), IMAGE)  # < 10 kB
    assert Settings.from_env({"UNISAM_MAX_DOWNLOAD_MB": "8"}).max_download_mb == 8
    with pytest.raises(ValueError, match="UNISAM_MAX_DOWNLOAD_MB must be a number of megabytes"):
        Settings.from_env({"UNISAM_MAX_DOWNLOAD_MB": "lots"})


@pytest.mark.parametrize(
    "url, token, message",
    [
        ("/data/upload/3/gone.png", TOKEN, "image '/data/upload/3/gone.png' of task 7 failed: HTTP 404"),
        ("/data/upload/3/private.png", "wrong", "HTTP 401 Unauthorized from http.*LABEL_STUDIO_API_KEY"),
        ("/data/upload/3/broken.png", TOKEN, "cannot read image '/data/upload/3/broken.png' of task 7"),
        ("/data/upload/3/ab12-disks.png", "", "set LABEL_STUDIO_API_KEY"),
        ("", TOKEN, "task 7 has no image URL"),
        ("disks.png", TOKEN, "cannot fetch image 'disks.png' of task 7: it is neither a Label Studio path"),
    ],
)
def test_fetch_errors_are_clear(hosts, url, token, message, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_ACCESS_TOKEN", raising=False)
    label_studio = hosts[0]
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
