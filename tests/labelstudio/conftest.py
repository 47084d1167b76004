"""Session fixtures: a real Label Studio 1.23 server (its own virtualenv, fresh data dir) and the unisam
backend served by uvicorn in a thread, recording the payloads Label Studio sends to it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from ls_helpers import TOKEN, BackendServer, ImageHost, free_port

from unisam_labelstudio import Settings, UnisamBackend

ROOT = Path(__file__).parents[2]
LABEL_STUDIO = ROOT / ".venv-labelstudio" / "bin" / "label-studio"
START_TIMEOUT_S = 240  # the first start runs all database migrations


class LabelStudio:
    """A running Label Studio: ``url``, an authenticated ``session`` (legacy token) and ``files``, the
    directory served as local storage (``/data/local-files/?d=images/<name>``)."""

    def __init__(self, url: str, files: Path):
        self.url = url
        self.files = files
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {TOKEN}"

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.session.request(method, self.url + path, timeout=120, **kwargs)
        assert response.ok, f"{method} {path}: HTTP {response.status_code} {response.text[:500]}"
        return response


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> LabelStudio:
    assert LABEL_STUDIO.exists(), f"{LABEL_STUDIO} is missing: run .ci/setup-labelstudio.sh"
    base = tmp_path_factory.mktemp("label-studio")
    files = base / "files"
    (files / "images").mkdir(parents=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(
        LABEL_STUDIO_USERNAME="tester@example.com",
        LABEL_STUDIO_PASSWORD="unisam-test-password",
        LABEL_STUDIO_USER_TOKEN=TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files),
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
    )
    command = [
        str(LABEL_STUDIO),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(base / "data"),
        "--log-level",
        "WARNING",
    ]
    log_path = base / "label-studio.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"Label Studio exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not up in {START_TIMEOUT_S} s: {log_path.read_text()[-3000:]}"
            try:
                if requests.get(url + "/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        yield LabelStudio(url, files)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def remote_host() -> ImageHost:
    """An image host besides Label Studio that the backend is allowed to fetch from (tests add files)."""
    with ImageHost({}) as host:
        yield host


@pytest.fixture(scope="session")
def backend_server(label_studio, remote_host) -> BackendServer:
    """The backend configured like a user would: LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY and the one
    other image host it may fetch from (UNISAM_ALLOWED_IMAGE_HOSTS)."""
    settings = Settings.from_env(
        {
            "UNISAM_MODEL": "unisam-tiny",
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": TOKEN,
            "UNISAM_ALLOWED_IMAGE_HOSTS": remote_host.url.split("//")[1],
        }
    )
    with BackendServer(UnisamBackend(settings)) as server:
        yield server
