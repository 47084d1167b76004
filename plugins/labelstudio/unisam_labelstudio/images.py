"""Fetch a task's image the way Label Studio serves it, only from where it may come, with clear errors,
and keep recent ones in memory.

Where a task file may come from (no server-side request forgery; a refused URL is never requested):

- **Label Studio** (``LABEL_STUDIO_URL``, else the hostname Label Studio sent to ``/setup``): paths
  (``/data/upload/...``, ``upload/...``, ``/data/local-files/?d=...``, ``/tasks/<id>/resolve/?fileuri=...``)
  and absolute URLs on that origin (scheme, host and port); ``s3://``/``gs://``/``azure-blob://`` URIs
  through its presign endpoint. The access token is sent there and nowhere else. A redirect that Label
  Studio answers is followed (that is how it hands out presigned cloud-storage URLs), without the token.
- **Local files** under ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``: a ``/data/local-files/?d=...`` file
  that exists under that root is read from disk; a ``d`` that leads outside it (``..``, an absolute
  path, a symlink) is refused. Without the setting nothing is read from disk.
- **Hosts the operator allows** (``UNISAM_ALLOWED_IMAGE_HOSTS``): ``host``, ``host:port`` or
  ``*.domain`` entries, optionally with a scheme (``https://host``); fetched without the token, and
  their redirects must stay on Label Studio or an allowed host.

Anything else (other hosts, e.g. ``http://169.254.169.254/``, ``file://``, other schemes) is refused
with :class:`ForbiddenURL`. Downloads stream to disk with timeouts, up to ``UNISAM_MAX_DOWNLOAD_MB``.
Both kinds of Label Studio token work: a legacy token is sent as ``Token <key>``; a personal access
token (a JWT refresh token) is exchanged at ``/api/token/refresh/`` for short-lived access tokens,
sent as ``Bearer <access>``.
"""

from __future__ import annotations

import base64
import os
import posixpath
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt
import numpy as np
import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import VERIFY_SSL
from unisam import LRUCache, load_image
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
LOCAL_FILES = "/data/local-files/"
MAX_REDIRECTS = 5
TIMEOUT_S = (10.0, 60.0)  # connect, read (between bytes)
CHUNK_BYTES = 2**20


class ImageError(Exception):
    """A task's image or video could not be fetched or decoded (the app answers HTTP 502)."""


class ForbiddenURL(ImageError):
    """A task's URL (or a redirect) points where the backend may not fetch from; nothing was sent
    there (the app answers HTTP 403)."""


Origin = tuple[str, str, int]  # scheme, lower-case host, port


def _origin(url: str) -> Origin | None:
    """(scheme, host, port) of an absolute http(s) URL; None for anything else, and for a URL that
    Python's parser and the one requests connects with (urllib3) read as different hosts (e.g.
    ``http://a.example\\@b.example/``: urllib3 connects to a.example), so the checked host is the one
    that gets the request."""
    try:
        parts = urlsplit(url)
        ours = (parts.scheme, (parts.hostname or "").lower(), parts.port)
        theirs = parse_url(requests.Request("GET", url).prepare().url)
    except (ValueError, requests.RequestException, LocationParseError):
        return None
    if ours[0] not in ("http", "https") or not ours[1]:
        return None
    if ours != (theirs.scheme, (theirs.host or "").strip("[]").lower(), theirs.port):
        return None
    return ours[0], ours[1], ours[2] or (443 if ours[0] == "https" else 80)


@dataclass(frozen=True)
class AllowedHost:
    """One ``UNISAM_ALLOWED_IMAGE_HOSTS`` entry: ``[scheme://]host[:port]``, host may start with ``*.``."""

    pattern: str
    scheme: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowedHost:
        """Raises ValueError for an entry that is no host."""
        text = entry.strip()
        try:
            parts = urlsplit(text if "://" in text else "//" + text)
            port = parts.port
        except ValueError:
            parts, port = None, None
        no_host = parts is None or not parts.hostname or parts.path or parts.query
        if no_host or parts.scheme not in ("", "http", "https"):
            raise ValueError(
                f"UNISAM_ALLOWED_IMAGE_HOSTS entry {entry!r} is not a host: give host, host:port, *.domain "
                "or http(s)://host[:port], separated by commas"
            )
        return cls(parts.hostname.lower(), parts.scheme or None, port)

    def matches(self, origin: Origin) -> bool:
        scheme, host, port = origin
        return (
            fnmatchcase(host, self.pattern)
            and self.scheme in (None, scheme)
            and (self.port is None or self.port == port)
        )


@dataclass(frozen=True)
class FetchPolicy:
    """Where task files may come from besides Label Studio: ``allowed_hosts`` and local files under
    ``local_root`` (see the module docstring); a download larger than ``max_download_bytes`` is
    stopped."""

    allowed_hosts: tuple[AllowedHost, ...] = ()
    local_root: str | None = None
    max_download_bytes: int = 4 * 2**30

    @classmethod
    def create(
        cls, allowed_hosts: Iterable[str] = (), local_root: str | None = None, max_download_mb: float = 4096
    ) -> FetchPolicy:
        """From host entries (strings), a local-files root and a download limit in MB; raises
        ValueError for a bad entry."""
        hosts = tuple(AllowedHost.parse(h) for h in allowed_hosts if h.strip())
        return cls(hosts, local_root or None, int(max_download_mb * 2**20))

    def allows(self, origin: Origin) -> bool:
        return any(allowed.matches(origin) for allowed in self.allowed_hosts)

    def local_file(self, d: str, where: str) -> str | None:
        """The path under ``local_root`` of a local-files ``d`` value if it exists there, else None.
        Raises :class:`ForbiddenURL` when ``d`` leads outside the root."""
        if posixpath.isabs(d) or posixpath.normpath(d).split("/")[0] == "..":
            raise ForbiddenURL(f"refused {where}: the local-files path {d!r} leads outside the local-files root")
        if self.local_root is None:
            return None
        root = os.path.realpath(self.local_root)
        path = os.path.realpath(os.path.join(root, d))
        if os.path.commonpath([root, path]) != root:
            raise ForbiddenURL(
                f"refused {where}: {d!r} resolves to {path}, outside LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT ({root})"
            )
        return path if os.path.isfile(path) else None


class TaskImages:
    """Loads task images as (H, W, 3) uint8 RGB from where ``policy`` allows; an LRU keeps the last
    ones, at most ``max_bytes`` in all, so repeated clicks on one image neither download nor decode it
    again; simultaneous first clicks on one image download it once. Thread-safe."""

    def __init__(self, max_bytes: int = 256 * 2**20, policy: FetchPolicy | None = None):
        self.cache = LRUCache(max_bytes)
        self.policy = policy or FetchPolicy()
        self._tokens = AccessTokens()
        self._loading: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # key -> lock while loading
        self._guard = threading.Lock()

    def load(self, url: str, *, hostname: str | None, token: str | None, task_id: int | None = None) -> np.ndarray:
        """The image at ``url`` (a task's data value). ``hostname``: Label Studio's base URL
        (http[s]://host:port), ``token``: its access token. Raises :class:`ImageError`."""
        if not isinstance(url, str) or not url:
            raise ImageError(f"task {task_id} has no image URL (got {url!r})")
        key = (hostname or "", url)
        image = self.cache.get(key)
        if image is not None:
            return image
        with self._guard:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # simultaneous first requests for one image: one download, the others wait for it
            image = self.cache.get(key)
            if image is None:
                with tempfile.TemporaryDirectory(prefix="unisam-ls-") as tmp:
                    path = self._get(url, tmp, hostname or "", token or "", task_id, "image")
                    try:
                        image = load_image(path)
                    except (ValueError, OSError) as error:
                        raise ImageError(f"cannot read image {url!r} of task {task_id}: {error}") from None
                image.flags.writeable = False  # shared between requests
                self.cache.put(key, image)
        return image

    def fetch(
        self,
        url: str,
        directory: str,
        *,
        hostname: str | None,
        token: str | None,
        task_id: int | None = None,
        what: str = "file",
    ) -> str:
        """Download the task file at ``url`` (e.g. a video) into ``directory`` and return its local
        path, with the same URL and token rules as :meth:`load`. Raises :class:`ImageError`."""
        if not isinstance(url, str) or not url:
            raise ImageError(f"task {task_id} has no {what} URL (got {url!r})")
        return self._get(url, directory, hostname or "", token or "", task_id, what)

    def _get(self, url: str, directory: str, hostname: str, token: str, task_id: int | None, what: str) -> str:
        """The local path of ``url``: a file under the local-files root, or a download into ``directory``."""
        where = f"{what} {url!r} of task {task_id}"
        candidates = self._resolve(url, hostname, token, task_id, where)
        if isinstance(candidates, str):
            return candidates
        label_studio = _origin(hostname)
        if any(_origin(c) == label_studio for c in candidates):
            token = self._tokens.access(hostname, token)
        error: ImageError | None = None
        for candidate in candidates:  # uploads: the storage proxy, then the legacy /data/upload/ path
            try:
                return self._download(candidate, directory, label_studio, token, where, hostname)
            except ForbiddenURL:
                raise
            except ImageError as failed:
                error = failed
        raise error

    def _resolve(self, url: str, hostname: str, token: str, task_id: int | None, where: str) -> str | list[str]:
        """A local path, or the absolute URLs to try in turn. Raises :class:`ForbiddenURL` for a URL the
        policy refuses, :class:`ImageError` for one that cannot be resolved."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            origin = _origin(url)
            if origin is None:
                raise ForbiddenURL(f"refused {where}: it is no valid URL, or its host is ambiguous")
            if origin == _origin(hostname):
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                return self._on_label_studio(path, hostname, token, where, require_token=False)
            if self.policy.allows(origin):
                return [url]
            on = f" (Label Studio is {hostname})" if hostname else ""
            raise ForbiddenURL(
                f"refused {where}: {parts.netloc} is neither the Label Studio origin{on} nor in "
                "UNISAM_ALLOWED_IMAGE_HOSTS"
            )
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise ImageError(f"cannot fetch {where}: a cloud-storage URI needs the task id")
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            return self._on_label_studio(f"/tasks/{task_id}/presign/?fileuri={fileuri}", hostname, token, where)
        if scheme:
            raise ForbiddenURL(
                f"refused {where}: only http(s) URLs, Label Studio paths and {'/'.join(CLOUD_SCHEMES)} URIs are fetched"
            )
        if url.startswith(("upload/", "/upload/")):
            url = "/data/" + url.lstrip("/")
        if not url.startswith("/"):
            raise ImageError(
                f"cannot fetch {where}: it is neither a Label Studio path (/data/...) nor an http(s) or "
                "cloud-storage URL"
            )
        return self._on_label_studio(url, hostname, token, where)

    def _on_label_studio(self, path: str, hostname: str, token: str, where: str, require_token: bool = True):
        """A path (with query) on Label Studio: a local file, or its URLs (uploads: the storage proxy
        first, as the SDK's ``get_local_path`` does, then ``/data/upload/...``)."""
        parts = urlsplit(path)
        if parts.path.startswith(LOCAL_FILES) or parts.path == LOCAL_FILES.rstrip("/"):
            d = parse_qs(parts.query).get("d", [""])[0]
            local = self.policy.local_file(d, where)
            if local is not None:
                return local
        if not hostname:
            raise ImageError(
                f"cannot resolve {where}: it is on Label Studio, whose address is unknown: set LABEL_STUDIO_URL"
            )
        if _origin(hostname) is None:
            raise ImageError(f"cannot fetch {where}: LABEL_STUDIO_URL {hostname!r} is no http(s)://host[:port] URL")
        if require_token and not token:
            raise ImageError(
                f"cannot fetch {where} from Label Studio without an access token: set LABEL_STUDIO_API_KEY"
            )
        base = hostname.rstrip("/")
        if parts.path.startswith("/data/upload/"):
            stored = parts.path[len("/data/") :]
            return [f"{base}/storage-data/uploaded/?filepath={stored}", base + path]
        return [base + path]

    def _download(
        self, url: str, directory: str, label_studio: Origin | None, token: str, where: str, hostname: str
    ) -> str:
        """Stream ``url`` into ``directory``, following redirects by the policy. Raises :class:`ImageError`."""
        from_label_studio = False
        for _ in range(MAX_REDIRECTS + 1):
            origin = _origin(url)
            if origin is None or not (origin == label_studio or self.policy.allows(origin) or from_label_studio):
                raise ForbiddenURL(
                    f"refused {where}: redirected to {url!r}, which is neither Label Studio nor in "
                    "UNISAM_ALLOWED_IMAGE_HOSTS; not followed"
                )
            headers = {"Authorization": _authorization(token)} if token and origin == label_studio else {}
            try:
                response = requests.get(
                    url, headers=headers, stream=True, allow_redirects=False, timeout=TIMEOUT_S, verify=VERIFY_SSL
                )
                with response:
                    if response.is_redirect:
                        from_label_studio = origin == label_studio
                        url = urljoin(url, response.headers["location"])
                        continue
                    response.raise_for_status()
                    limit, announced = self.policy.max_download_bytes, response.headers.get("Content-Length", "")
                    mb = round(limit / 2**20, 3)
                    too_large = ImageError(
                        f"cannot fetch {where}: it is larger than UNISAM_MAX_DOWNLOAD_MB ({mb:g} MB)"
                    )
                    if announced.isdigit() and int(announced) > limit:
                        raise too_large
                    path, written = os.path.join(directory, _file_name(url)), 0
                    with open(path, "wb") as out:
                        for chunk in response.iter_content(CHUNK_BYTES):
                            written += len(chunk)
                            if written > limit:
                                raise too_large
                            out.write(chunk)
                    return path
            except requests.HTTPError as error:
                raise ImageError(_http_message(where, error.response, hostname)) from None
            except requests.ConnectionError as error:
                raise ImageError(
                    f"cannot connect to fetch {where}: {type(error).__name__}. "
                    f"Set LABEL_STUDIO_URL (now {hostname!r}) to an address of Label Studio this backend can reach"
                ) from None
            except requests.RequestException as error:
                raise ImageError(f"cannot fetch {where}: {error}") from None
        raise ImageError(f"cannot fetch {where}: more than {MAX_REDIRECTS} redirects")


def _authorization(token: str) -> str:
    """The Authorization header Label Studio expects: ``Bearer`` for a JWT access token, else ``Token``."""
    try:
        jwt.get_unverified_header(token)
        return "Bearer " + token
    except jwt.PyJWTError:
        return "Token " + token


def _file_name(url: str) -> str:
    """A file name for a download (keeps the suffix, which tells the image reader the format)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    name = posixpath.basename((query.get("filepath") or query.get("d") or [parts.path])[0])
    return name if name not in ("", ".", "..") else "download"


class AccessTokens:
    """Access tokens for personal access tokens (PATs), refreshed shortly before they expire; thread-safe.
    A legacy token (not a JWT refresh token) is used as it is."""

    MARGIN_S = 30.0  # refresh this long before the access token expires

    def __init__(self):
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def access(self, hostname: str, token: str) -> str:
        """The token to send to Label Studio at ``hostname``. Raises :class:`ImageError` when Label
        Studio refuses to refresh a PAT."""
        if not hostname or not _is_refresh_token(token):
            return token
        with self._lock:
            access, expires = self._tokens.get((hostname, token), ("", 0.0))
            if time.time() < expires - self.MARGIN_S:
                return access
            url = hostname.rstrip("/") + "/api/token/refresh/"
            try:
                response = requests.post(url, json={"refresh": token}, timeout=30)
                response.raise_for_status()
                access = response.json()["access"]
            except requests.HTTPError as error:
                raise ImageError(
                    f"Label Studio refused the personal access token (HTTP {error.response.status_code} from {url}): "
                    "set LABEL_STUDIO_API_KEY to a valid token"
                ) from None
            except (requests.RequestException, ValueError, KeyError) as error:
                raise ImageError(f"cannot exchange the personal access token at {url}: {error}") from None
            expires = jwt.decode(access, options={"verify_signature": False}).get("exp", 0)
            self._tokens[(hostname, token)] = (access, float(expires))
            return access


def _is_refresh_token(token: str) -> bool:
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("token_type") == "refresh"
    except jwt.PyJWTError:
        return False


def _http_message(where: str, response: requests.Response, hostname: str) -> str:
    code, reason, failed = response.status_code, response.reason, response.url
    text = f"fetching {where} failed: HTTP {code} {reason} from {failed}"
    on_label_studio = bool(hostname) and _origin(failed) == _origin(hostname)
    if code in (401, 403) and on_label_studio:
        text += (
            ". Set LABEL_STUDIO_API_KEY to the access token of a Label Studio user who can see this project "
            "(a legacy token needs legacy tokens enabled in the organization)"
        )
    elif code == 404:
        text += ": the file does not exist"
    return text
