"""unisam.weights against a real HTTP server on 127.0.0.1 (no mocks)."""

import functools
import hashlib
import http.server
import logging
import os
import threading
from pathlib import Path

import pytest

from unisam import weights
from unisam.registry import WeightFile
from unisam.weights import WeightsNotFoundError, cache_dir, cached_sha256, resolve_weight, sha256_file

PAYLOAD = os.urandom(3 * 2**20 + 123)  # several download chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path.startswith("/cut"):  # the connection drops half-way through the file
            self.send_response(200)
            if self.path == "/cut.bin":  # announces the whole length; /cut-unsized.bin announces none
                self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/www at http://127.0.0.1:PORT/; yields (base_url, www_dir, request log)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # never route loopback through a proxy
    www = tmp_path / "www"
    www.mkdir()
    (www / "model.bin").write_bytes(PAYLOAD)
    _Handler.requests = []
    handler = functools.partial(_Handler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, _Handler.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(path))
    return path


def _file(base: str, name: str = "model.bin", sha: str = PAYLOAD_SHA, size: int = len(PAYLOAD)) -> WeightFile:
    return WeightFile(filename="edge_sam.bin", url=f"{base}/{name}", sha256=sha, size=size)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file()) if directory.exists() else []


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("UNISAM_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "unisam"


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert sha256_file(path) == PAYLOAD_SHA


def test_download_verifies_and_then_works_offline(server, cache):
    base, _, requests = server
    file = _file(base)
    path = resolve_weight(file, download=True, progress=True)
    assert path == cache / "edge_sam.bin" and path.read_bytes() == PAYLOAD
    assert requests == ["/model.bin"]
    assert _leftovers(cache) == ["edge_sam.bin"]  # no partial files
    again = resolve_weight(file)  # offline: found in the cache, no request
    assert again == path and requests == ["/model.bin"]


def test_wrong_hash_download_refused_and_nothing_left(server, cache):
    base, _, _ = server
    with pytest.raises(ValueError, match="SHA-256") as info:
        resolve_weight(_file(base, sha="0" * 64), download=True, progress=False)
    assert PAYLOAD_SHA in str(info.value) and "0" * 64 in str(info.value)
    assert _leftovers(cache) == []


def test_wrong_size_download_refused_and_nothing_left(server, cache):
    base, www, _ = server
    with pytest.raises(ValueError, match="larger than the expected"):
        resolve_weight(_file(base, size=len(PAYLOAD) - 1), download=True, progress=False)
    (www / "short.bin").write_bytes(PAYLOAD[:1000])
    with pytest.raises(ValueError, match="stopped at 1000"):
        resolve_weight(_file(base, name="short.bin"), download=True, progress=False)
    assert _leftovers(cache) == []


@pytest.mark.parametrize("size", [len(PAYLOAD), None])  # None: a registry entry of unknown size
def test_interrupted_download_is_refused_and_leaves_no_half_file(server, cache, size):
    base, _, _ = server
    with pytest.raises(ConnectionError, match=r"interrupted after \d+ bytes.*nothing was saved"):
        resolve_weight(_file(base, name="cut.bin", size=size), download=True, progress=False)
    assert _leftovers(cache) == []
    # no Content-Length: the cut is only seen at the end, as a file shorter than the registry's or a wrong SHA-256
    with pytest.raises(ValueError, match="stopped at" if size else "SHA-256"):
        resolve_weight(_file(base, name="cut-unsized.bin", size=size), download=True, progress=False)
    assert _leftovers(cache) == []
    with pytest.raises(WeightsNotFoundError):  # and nothing half-downloaded is taken for the file later
        resolve_weight(_file(base, name="cut.bin", size=size))


def test_http_error_leaves_nothing(server, cache):
    base, _, _ = server
    with pytest.raises(ConnectionError, match="missing.bin"):
        resolve_weight(_file(base, name="missing.bin"), download=True, progress=False)
    assert _leftovers(cache) == []


def test_missing_file_message_and_no_network(server, cache):
    base, _, requests = server
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weight(_file(base), model="edge_sam")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    expected = ("edge_sam.bin", "3.0 MiB", f"{base}/model.bin", str(cache / "edge_sam.bin"), "weights pull edge_sam")
    for part in expected:
        assert part in message
    assert requests == []
    with pytest.raises(WeightsNotFoundError, match="unisam weights pull <model>"):
        resolve_weight(_file(base))


def test_explicit_path_is_the_callers_own_file_unless_verify(tmp_path, cache, caplog):
    file = _file("http://127.0.0.1:9")  # never contacted
    official = tmp_path / "mine.bin"
    official.write_bytes(PAYLOAD)
    with caplog.at_level(logging.INFO, logger="unisam.weights"):
        assert resolve_weight(file, path=official, model="edgesam") == official
    assert caplog.records == []  # the official file, under another name: nothing to say
    own = tmp_path / "finetuned.bin"
    own.write_bytes(PAYLOAD[:-1] + b"x")
    own_sha = hashlib.sha256(own.read_bytes()).hexdigest()
    with caplog.at_level(logging.INFO, logger="unisam.weights"):
        assert resolve_weight(file, path=own, model="edgesam") == own  # a note, not a refusal
    (note,) = caplog.records
    assert note.levelno == logging.INFO
    message = note.getMessage()
    assert "finetuned.bin" in message and own_sha[:12] in message and PAYLOAD_SHA[:12] in message
    assert "own fine-tuned weights for the edgesam architecture" in message
    with pytest.raises(ValueError) as info:  # verify=True insists on the official file
        resolve_weight(file, path=own, verify=True)
    message = str(info.value)
    assert PAYLOAD_SHA in message and own_sha in message and "verify=True" in message
    assert resolve_weight(file, path=official, verify=True) == official
    with pytest.raises(WeightsNotFoundError, match="nope.bin"):
        resolve_weight(file, path=tmp_path / "nope.bin")


def test_cached_sha256_hashes_each_file_version_once(tmp_path, cache, monkeypatch):
    path = tmp_path / "big.bin"
    path.write_bytes(PAYLOAD)
    calls = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: calls.append(p) or real(p))
    assert cached_sha256(path) == PAYLOAD_SHA and len(calls) == 1
    weights._memo.clear()  # a new process: the record on disk is enough
    assert cached_sha256(path) == PAYLOAD_SHA and len(calls) == 1
    path.write_bytes(PAYLOAD[:-1])  # rewritten: new size, so hashed again
    assert cached_sha256(path) == hashlib.sha256(PAYLOAD[:-1]).hexdigest() and len(calls) == 2


def test_verification_record_avoids_rehash(cache):
    cache.mkdir()
    target = cache / "edge_sam.bin"
    target.write_bytes(PAYLOAD)
    file = _file("http://127.0.0.1:9")
    assert resolve_weight(file) == target  # hashed once, record written
    # Corrupt the bytes but keep size and mtime: the record is trusted, so no rehash notices.
    stat = target.stat()
    target.write_bytes(b"\x00" + PAYLOAD[1:])
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert resolve_weight(file) == target
    # Any change of mtime (or size) invalidates the record: the file is hashed again and refused.
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="SHA-256"):
        resolve_weight(file)


def test_corrupt_cached_file_is_replaced_when_download_allowed(server, cache):
    base, _, requests = server
    cache.mkdir()
    (cache / "edge_sam.bin").write_bytes(b"half a file")
    with pytest.raises(ValueError, match="corrupt"):
        resolve_weight(_file(base))
    assert requests == []
    path = resolve_weight(_file(base), download=True, progress=False)
    assert path.read_bytes() == PAYLOAD and requests == ["/model.bin"]
