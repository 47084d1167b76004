"""Image-embedding caches keyed by ``(model_id, image_digest)``: an in-memory LRU and an ``.npz`` store.

An embedding depends only on the model and the image, so re-prompting the same image (interactive
annotation, propagation, "segment everything" after a click) skips the expensive image encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DISK_FORMAT_VERSION = 1
_HEADER_KEY = "header"
_FEATURES_KEY = "features"


@dataclass(frozen=True, eq=False)
class Embedding:
    """The prompt-independent output of the image encoder for one image.

    features: ``(1, C, h, w)`` float32 image embedding. original_size: ``(H, W)`` of the embedded image.
    input_size: ``(h, w)`` of that image after resize-longest-side (before padding). extras: optional
    prompt-independent precomputations (name -> array), may be empty. (``eq=False``: compared by identity,
    since arrays have no single truth value.)
    """

    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_id: str
    image_digest: str
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.features, np.ndarray) or self.features.ndim != 4:
            raise ValueError(f"features must be a (1, C, h, w) array, got {getattr(self.features, 'shape', None)}")
        object.__setattr__(self, "original_size", tuple(int(s) for s in self.original_size))
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        object.__setattr__(self, "extras", dict(self.extras))

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (features and extras)."""
        return int(self.features.nbytes + sum(np.asarray(v).nbytes for v in self.extras.values()))


class LRUCache:
    """Thread-safe in-memory LRU of objects with an ``nbytes`` attribute (arrays, embeddings), bounded
    by their total size; keys are any hashable values.

    An entry larger than ``max_bytes`` is not stored. ``hits``/``misses`` count :meth:`get` results.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Total ``nbytes`` of the stored entries."""
        return self._nbytes

    def get(self, key: Hashable) -> Any | None:
        """The entry for ``key`` (now most recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store (or replace) an entry, evicting least recently used ones to stay within ``max_bytes``."""
        size = int(value.nbytes)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= int(old.nbytes)
            if size > self.max_bytes:
                return
            while self._entries and self._nbytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._nbytes -= int(evicted.nbytes)
            self._entries[key] = value
            self._nbytes += size

    def __contains__(self, key: Hashable) -> bool:
        """``key in cache``; does not count as a hit or change the LRU order."""
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop all entries and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
            self.hits = 0
            self.misses = 0


class DiskEmbeddingCache:
    """Embeddings stored as ``<directory>/<model>/<image_digest>.npz`` (arrays + a JSON header).

    Reads refuse (return None, log a warning) an entry that is corrupt or truncated, of another format
    version, or whose header names another model or image than requested. Writes are atomic.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path_for(self, model_id: str, image_digest: str) -> Path:
        """Where the entry for ``(model_id, image_digest)`` lives."""
        if not re.fullmatch(r"[0-9A-Za-z_-]+", image_digest):
            raise ValueError(f"image_digest must be a hex/word string, got {image_digest!r}")
        slug = re.sub(r"[^0-9A-Za-z_.-]+", "_", model_id)[:64]
        tag = hashlib.blake2b(model_id.encode(), digest_size=4).hexdigest()
        return self.directory / f"{slug}-{tag}" / f"{image_digest}.npz"

    def __contains__(self, key: tuple[str, str]) -> bool:
        return self.path_for(*key).is_file()

    def get(self, model_id: str, image_digest: str) -> Embedding | None:
        """The stored embedding, or None when absent or refused."""
        path = self.path_for(model_id, image_digest)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(bytes(data[_HEADER_KEY]).decode("utf-8"))
                arrays = {name: data[name] for name in data.files if name != _HEADER_KEY}
            problem = self._check_header(header, model_id, image_digest, arrays)
            if not problem:
                return Embedding(
                    features=arrays[_FEATURES_KEY],
                    original_size=tuple(header["original_size"]),
                    input_size=tuple(header["input_size"]),
                    model_id=model_id,
                    image_digest=image_digest,
                    extras={name: arrays[f"extra{i}"] for i, name in enumerate(header["extras"])},
                )
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            problem = f"unreadable ({type(error).__name__}: {error})"
        logger.warning("ignoring embedding cache entry %s: %s", path, problem)
        return None

    def put(self, embedding: Embedding) -> Path:
        """Write ``embedding`` under its own ``(model_id, image_digest)`` (replacing any old entry)."""
        path = self.path_for(embedding.model_id, embedding.image_digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = list(embedding.extras)
        header = {
            "format_version": DISK_FORMAT_VERSION,
            "model_id": embedding.model_id,
            "image_digest": embedding.image_digest,
            "original_size": list(embedding.original_size),
            "input_size": list(embedding.input_size),
            "extras": names,
        }
        arrays = {f"extra{i}": np.asarray(embedding.extras[name]) for i, name in enumerate(names)}
        arrays[_FEATURES_KEY] = embedding.features
        if any(a.dtype.hasobject for a in arrays.values()):
            raise ValueError("embedding arrays must be numeric: object arrays cannot be stored without pickle")
        arrays[_HEADER_KEY] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def clear(self) -> None:
        """Delete every stored entry."""
        for path in self.directory.glob("*/*.npz"):
            path.unlink(missing_ok=True)

    @staticmethod
    def _check_header(header: Any, model_id: str, image_digest: str, arrays: dict[str, np.ndarray]) -> str:
        """Why an entry must be refused ('' when it is fine)."""
        if not isinstance(header, dict) or header.get("format_version") != DISK_FORMAT_VERSION:
            return f"unknown format (expected format_version {DISK_FORMAT_VERSION})"
        if header.get("model_id") != model_id:
            return f"it holds model {header.get('model_id')!r}, not {model_id!r}"
        if header.get("image_digest") != image_digest:
            return f"it holds image {header.get('image_digest')!r}, not {image_digest!r}"
        expected = {_FEATURES_KEY} | {f"extra{i}" for i in range(len(header.get("extras", [])))}
        if set(arrays) != expected or arrays[_FEATURES_KEY].ndim != 4:
            return "its arrays do not match its header"
        return ""
