"""Fetch a task's image the way Label Studio serves it, with clear errors, and keep recent ones in memory.

The download itself is the SDK's ``get_local_path``: ``/data/upload/...`` and ``/data/local-files/?d=...``
are resolved against the Label Studio URL (local files are read from disk when
``LOCAL_FILES_DOCUMENT_ROOT`` holds them), ``s3://``/``gs://``/``azure-blob://`` go through Label
Studio's presign endpoint, absolute URLs are fetched as they are. The SDK sends the access token only
to URLs on the Label Studio origin (same host:port), never to other hosts. Both kinds of Label Studio
token work: a legacy token is sent as ``Token <key>``; a personal access token (a JWT refresh token)
is exchanged at ``/api/token/refresh/`` for short-lived access tokens, sent as ``Bearer <access>``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from urllib.parse import urlparse

import jwt
import numpy as np
import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path
from unisam import LRUCache, load_image


class ImageError(Exception):
    """A task's image or video could not be fetched or decoded (the app answers HTTP 502)."""


class TaskImages:
    """Loads task images as (H, W, 3) uint8 RGB; an LRU keeps the last ones, at most ``max_bytes`` in all,
    so repeated clicks on one image neither download nor decode it again. Thread-safe."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self._cache = LRUCache(max_bytes)
        self._tokens = AccessTokens()

    def load(self, url: str, *, hostname: str | None, token: str | None, task_id: int | None = None) -> np.ndarray:
        """The image at ``url`` (a task's data value). ``hostname``: Label Studio's base URL
        (http[s]://host:port), ``token``: its access token. Raises :class:`ImageError`."""
        if not isinstance(url, str) or not url:
            raise ImageError(f"task {task_id} has no image URL (got {url!r})")
        image = self._cache.get((hostname or "", url))
        if image is None:
            image = self._download(url, hostname or "", self._tokens.access(hostname or "", token or ""), task_id)
            image.flags.writeable = False  # shared between requests
            self._cache.put((hostname or "", url), image)
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
        hostname = hostname or ""
        return _get(url, directory, hostname, self._tokens.access(hostname, token or ""), task_id, what)

    def _download(self, url: str, hostname: str, token: str, task_id: int | None) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="unisam-ls-") as tmp:
            path = _get(url, tmp, hostname, token, task_id, "image")
            try:
                return load_image(path)
            except (ValueError, OSError) as error:
                raise ImageError(f"cannot read image {url!r} of task {task_id}: {error}") from None


def _get(url: str, directory: str, hostname: str, token: str, task_id: int | None, what: str) -> str:
    """The SDK's download of ``url`` into ``directory``; its errors as :class:`ImageError`."""
    where = f"{what} {url!r} of task {task_id}"
    try:
        return get_local_path(url, cache_dir=directory, hostname=hostname, access_token=token, task_id=task_id)
    except requests.HTTPError as error:
        raise ImageError(_http_message(where, error.response, hostname)) from None
    except requests.ConnectionError as error:
        raise ImageError(
            f"cannot connect to fetch {where}: {type(error).__name__}. "
            f"Set LABEL_STUDIO_URL (now {hostname!r}) to an address of Label Studio this backend can reach"
        ) from None
    except FileNotFoundError as error:
        raise ImageError(f"cannot resolve {where}: {error}") from None
    except (requests.RequestException, ValueError) as error:
        raise ImageError(f"cannot fetch {where}: {error}") from None


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
    on_label_studio = bool(hostname) and urlparse(failed).netloc == urlparse(hostname).netloc
    if code in (401, 403) and on_label_studio:
        text += (
            ". Set LABEL_STUDIO_API_KEY to the access token of a Label Studio user who can see this project "
            "(a legacy token needs legacy tokens enabled in the organization)"
        )
    elif code == 404:
        text += ": the file does not exist"
    return text
