"""Find, download and verify weight files.

Files live in :func:`cache_dir` (``$UNISAM_CACHE_DIR`` or ``~/.cache/unisam``) under their registry
filename. Nothing touches the network unless ``download=True``. A downloaded or cached file is
trusted only once its SHA-256 matches the registry. A file the caller names explicitly may be their
own weights (e.g. fine-tuned) in the official layout: a different SHA-256 is then logged, not refused,
unless ``verify=True``. Every file's SHA-256 (:func:`cached_sha256`) is remembered by (size, mtime)
in a small JSON record under ``<cache_dir>/verified/``, so large files are hashed once, not at every
start.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from unisam.registry import WeightFile

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TIMEOUT_S = 60


class WeightsNotFoundError(FileNotFoundError):
    """A weight file is neither at the given path nor in the cache, and downloading was not allowed."""


def cache_dir() -> Path:
    """Where weight files are kept: ``$UNISAM_CACHE_DIR`` if set, else ``~/.cache/unisam``."""
    env = os.environ.get("UNISAM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unisam"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's contents, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


_memo: dict[tuple[str, int, int], str] = {}  # (absolute path, size, mtime_ns) -> SHA-256, this process


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file` of ``path``, computed once per file version.

    The digest is remembered by (absolute path, size, mtime) in this process and in a record under
    ``<cache_dir>/verified/``, so a multi-GB checkpoint is hashed once, not at every start. A file
    rewritten in place (new size or mtime) is hashed again.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    digest = None
    try:
        record = json.loads(_record_path(path).read_text())
        if isinstance(record, dict) and record == _stamp(path, str(record.get("sha256"))):
            digest = record["sha256"]
    except (OSError, ValueError):
        pass
    if digest is None:
        digest = sha256_file(path)
        _remember(path, digest)
    _memo[key] = digest
    return digest


def resolve_weight(
    file: WeightFile,
    *,
    path: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = True,
    model: str | None = None,
    verify: bool = False,
) -> Path:
    """The local path of ``file``: the file at ``path``, or a verified copy in the cache.

    ``path``: use this file; it must exist. Its SHA-256 is compared with ``file.sha256``: a match says
    nothing; a difference is logged (INFO) as the caller's own weights for ``model``'s architecture
    (e.g. a fine-tuned checkpoint in the official layout), or, with ``verify=True``, refused.
    Otherwise the cached copy ``cache_dir() / file.filename``, which must match ``file.sha256``;
    when absent (or corrupt) and ``download`` is true it is fetched from ``file.url`` with a progress
    bar and verified. ``model`` names the model in messages.
    Raises ``WeightsNotFoundError`` when there is no file and no permission to download, and
    ``ValueError`` when a cached or downloaded file's SHA-256 differs from the registry (or, with
    ``verify=True``, an explicit file's).
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsNotFoundError(f"weight file {explicit} does not exist (expected {file.filename})")
        actual = cached_sha256(explicit)
        if actual != file.sha256:
            if verify:
                raise ValueError(_mismatch_message(explicit, actual, file) + " (verify=True: only the official file)")
            logger.info(
                "%s is not the official %s (SHA-256 %s, official %s): treating it as your own fine-tuned "
                "weights for the %s architecture",
                explicit, file.filename, actual[:12], file.sha256[:12], model or file.filename,
            )
        return explicit

    target = cache_dir() / file.filename
    if target.is_file():
        try:
            _verify(target, file)
            return target
        except ValueError:
            if not download:
                raise
            logger.warning("cached %s is corrupt; downloading it again", target)
    if not download:
        raise WeightsNotFoundError(_not_found_message(file, target, model))
    _download(file, target, progress)
    return target


def _verify(path: Path, file: WeightFile) -> None:
    """Raise ``ValueError`` unless ``path`` has ``file.sha256`` (trusting a matching digest record)."""
    actual = cached_sha256(path)
    if actual != file.sha256:
        raise ValueError(_mismatch_message(path, actual, file))


def _mismatch_message(path: Path, actual: str, file: WeightFile) -> str:
    return (
        f"weight file {path} has SHA-256 {actual}, expected {file.sha256} for {file.filename}: the "
        "file may be corrupt (an interrupted download) or a different version. Delete it and fetch "
        f"it again from {file.url}"
    )


def _stamp(path: Path, sha256: str) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def _remember(path: Path, sha256: str) -> None:
    """Record that ``path`` at its current size and mtime has ``sha256`` (read by :func:`cached_sha256`)."""
    record_path = _record_path(path)
    try:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(record_path, json.dumps(_stamp(path, sha256)))
    except OSError as error:  # a read-only cache only costs a re-hash next time
        logger.debug("could not record verification of %s: %s", path, error)


def _record_path(path: Path) -> Path:
    """The digest record of a weight file: one small JSON per absolute path."""
    key = hashlib.blake2b(str(path.resolve()).encode(), digest_size=12).hexdigest()
    return cache_dir() / "verified" / f"{path.name}.{key}.json"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(file: WeightFile, target: Path, progress: bool) -> None:
    """Stream ``file.url`` into a temporary file beside ``target``, verify size and SHA-256, then move it
    into place. On any failure nothing is left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{file.filename}.", suffix=".part")
    h = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(file.url, timeout=_TIMEOUT_S) as response:
            with tqdm(
                total=file.size, unit="B", unit_scale=True, unit_divisor=1024, desc=file.filename, disable=not progress
            ) as bar:
                while chunk := response.read(_CHUNK):
                    received += len(chunk)
                    if file.size is not None and received > file.size:
                        raise ValueError(f"download of {file.url} is larger than the expected {file.size} bytes")
                    h.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            announced = response.headers.get("Content-Length", "")
            if announced.isdigit() and received < int(announced):  # urllib ends a short body without an error
                raise http.client.IncompleteRead(b"", int(announced) - received)
        if file.size is not None and received != file.size:
            raise ValueError(f"download of {file.url} stopped at {received} of {file.size} bytes")
        if h.hexdigest() != file.sha256:
            raise ValueError(
                f"download of {file.url} has SHA-256 {h.hexdigest()}, expected {file.sha256}: the server "
                "sent a different or damaged file; nothing was saved"
            )
        os.replace(tmp, target)
    except urllib.error.URLError as error:
        Path(tmp).unlink(missing_ok=True)
        raise ConnectionError(f"could not download {file.url}: {error}") from error
    except (http.client.HTTPException, ConnectionError, TimeoutError) as error:  # the connection broke mid-file
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, http.client.IncompleteRead):
            detail = f"the server announced {received + (error.expected or 0)} bytes"
        else:
            detail = " ".join(str(error).split()) or type(error).__name__
        raise ConnectionError(
            f"download of {file.url} was interrupted after {received} bytes ({detail}); nothing was saved, "
            "run it again"
        ) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remember(target, file.sha256)


def _not_found_message(file: WeightFile, target: Path, model: str | None) -> str:
    size = f" ({file.size / 2**20:.1f} MiB)" if file.size is not None else ""
    return (
        f"weight file {file.filename}{size} is not in the cache. Download it with\n"
        f"    unisam weights pull {model or '<model>'}\n"
        f"or fetch {file.url}\n"
        f"and put it at {target}\n"
        "(set UNISAM_CACHE_DIR to use another cache directory, or pass the file's path explicitly)."
    )
