"""Frames of a video, time-lapse or z-stack, read lazily one at a time.

:func:`open_frames` turns any sequence source into :class:`Frames`, a read-only sequence of
``(H, W, 3)`` uint8 RGB frames (:func:`unisam.images.load_image` of each, so what the model sees):

- an array ``(T, H, W)`` or ``(T, H, W, C)`` (NumPy, or any array-like with ``shape`` and indexing,
  e.g. a memory map or a dask/zarr array: only the frame asked for is read);
- a sequence of images (paths, PIL images or arrays), loaded when asked for;
- a directory of image files, in name order;
- a multi-page TIFF (``tifffile``), one page per frame;
- any other file as a video (PyAV, the ``video`` extra): decoded frame by frame from the nearest
  keyframe, with a small cache of recently decoded frames (never the whole video in memory).

All frames must have one ``(H, W)``: frame 0 sets it, and a frame of another size raises a
``ValueError`` naming both when it is read (lists of arrays are checked when opened). An empty
source, an unreadable or corrupt video raise ``ValueError`` too.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .images import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TIFF_SUFFIXES = (".tif", ".tiff")
VIDEO_CACHE_BYTES = 128 * 2**20  # decoded frames kept for stepping backwards through a video


class Frames(Sequence):
    """``len(frames)`` frames, ``frames[i]`` -> ``(H, W, 3)`` uint8 RGB, read when asked for.

    ``size``: ``(H, W)`` of every frame. ``reader``: the callable that reads frame ``i`` in its
    source's own format. ``close()`` (or a ``with`` block) releases an open file.
    """

    def __init__(self, count: int, reader: Callable[[int], Any], name: str, close: Callable[[], None] | None = None):
        self.reader, self.name, self._count, self._close = reader, name, int(count), close
        if self._count == 0:
            self.close()
            raise ValueError(f"{name} has no frames: a sequence to track needs at least one")
        self.size: tuple[int, int] = (0, 0)
        self.size = self[0].shape[:2]

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"frames are indexed by int, got {type(index).__name__}")
        if not -self._count <= index < self._count:
            raise IndexError(f"frame {index} is outside the {self._count} frames of {self.name}")
        index = int(index) % self._count
        frame = load_image(self.reader(index))
        if index and frame.shape[:2] != self.size:
            raise ValueError(
                f"frame {index} of {self.name} has size {frame.shape[:2]}, frame 0 {self.size}: "
                "all frames must have one (H, W)"
            )
        return frame

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self) -> Frames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_frames(source: Any) -> Frames:
    """``source`` (see the module docstring) as :class:`Frames`; ``Frames`` pass through."""
    if isinstance(source, Frames):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source))
    if hasattr(source, "shape") and hasattr(source, "ndim"):
        return _open_array(source)
    if isinstance(source, Sequence) or (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        return _open_images(source)
    raise ValueError(
        f"cannot read frames from {type(source).__name__}: pass an array (T, H, W[, C]), a sequence of "
        "images, a directory of images, a multi-page TIFF or a video file"
    )


def _open_array(array: Any) -> Frames:
    shape = tuple(array.shape)
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4):
        raise ValueError(f"an array of shape {shape} is one image, not frames; pass [image] or a (T, H, W[, C]) array")
    if len(shape) not in (3, 4):
        raise ValueError(f"frames must be an array (T, H, W) or (T, H, W, C); got shape {shape}")
    return Frames(shape[0], lambda i: np.asarray(array[i]), f"the array of shape {shape}")


def _open_images(items: Sequence) -> Frames:
    in_memory = items if isinstance(items, (list, tuple)) else ()  # others may read on indexing
    sizes = [tuple(item.shape[:2]) for item in in_memory if isinstance(item, np.ndarray)]
    for i, size in enumerate(sizes):
        if size != sizes[0]:
            raise ValueError(f"frame {i} has size {size}, frame 0 {sizes[0]}: all frames must have one (H, W)")
    return Frames(len(items), items.__getitem__, f"the sequence of {len(items)} images")


def _open_path(path: Path) -> Frames:
    if not path.exists():
        raise FileNotFoundError(f"frames not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return Frames(len(files), files.__getitem__, f"directory {path} (image files {', '.join(IMAGE_SUFFIXES)})")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _open_tiff(path)
    video = VideoReader(path)
    return Frames(len(video), video, f"video {path}", video.close)


def _open_tiff(path: Path) -> Frames:
    """Frames along the first axis of the file's first series: one page per frame read when asked
    for, else a memory map of the uncompressed data (tifffile stores small stacks as one page of
    samples), else (compressed) the series read at once."""
    try:
        import tifffile
    except ImportError as error:
        raise ImportError("reading a multi-page TIFF needs tifffile: pip install tifffile") from error
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
    except Exception as error:  # tifffile raises its own types for damaged files
        raise ValueError(f"cannot read TIFF {path}: {error}") from error
    shape = tuple(series.shape)
    if len(shape) == 2 or len(shape) > 4 or (len(shape) == 4 and shape[-1] not in (3, 4)):
        tif.close()
        raise ValueError(
            f"TIFF {path} holds a series of shape {shape} (axes {series.axes!r}), not frames (T, H, W[, C]): "
            "read it with tifffile and pass the frames as an array"
        )
    if len(series.pages) == shape[0]:
        pages = series.pages
        return Frames(shape[0], lambda i: pages[i].asarray(), f"TIFF {path}", tif.close)
    try:
        data = tifffile.memmap(path, series=0, mode="r")
    except ValueError:  # compressed or not contiguous
        data = series.asarray()
    tif.close()
    return Frames(shape[0], data.__getitem__, f"TIFF {path}")


class VideoReader:
    """Frame ``i`` of a video file as ``(H, W, 3)`` uint8 RGB, decoded with PyAV.

    Opening demuxes the packets (no decoding) to count the frames and find the keyframes; reading
    frame ``i`` continues decoding when ``i`` lies ahead in the same run, else seeks to the last
    keyframe at or before it. Decoded frames are kept up to :data:`VIDEO_CACHE_BYTES` (the newest),
    so that stepping backwards decodes each stretch once. ``decoded``: frames decoded so far.
    """

    def __init__(self, path: Path, cache_bytes: int = VIDEO_CACHE_BYTES):
        try:
            import av
        except ImportError as error:
            raise ImportError("reading video files needs PyAV: pip install 'unisam[video]' (or av)") from error
        self._av, self.path, self.cache_bytes, self.decoded = av, path, cache_bytes, 0
        try:
            self._container = av.open(str(path))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read video {path}: {error}. Is it a complete, playable video file?") from error
        if not self._container.streams.video:
            self.close()
            raise ValueError(f"{path} has no video stream")
        self._stream = self._container.streams.video[0]
        times, keys = [], []
        with self._errors("read"):
            for packet in self._container.demux(self._stream):
                time = packet.pts if packet.pts is not None else packet.dts
                if time is not None and packet.size:
                    times.append(time)
                    keys.append(packet.is_keyframe)
        order = np.argsort(times, kind="stable")
        self._times = np.asarray(times, np.int64)[order]
        self._keys = self._times[np.asarray(keys, bool)[order]] if times else self._times
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._decoder: Any = None
        self._last = -1  # index of the last frame the running decoder gave

    def __len__(self) -> int:
        return len(self._times)

    def __call__(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        target = int(self._times[index])
        before = self._keys[self._keys <= target]
        keyframe = int(before[-1]) if len(before) else int(self._times[0])
        running = self._decoder is not None and 0 <= self._last < index
        if not running or keyframe > self._times[self._last]:
            with self._errors(f"seek to frame {index} in"):
                self._container.seek(keyframe, backward=True, any_frame=False, stream=self._stream)
            self._decoder, self._last = self._container.decode(self._stream), -1
        with self._errors(f"decode frame {index} of"):
            for frame in self._decoder:
                if frame.pts is None:
                    raise ValueError(f"video {self.path} has frames without timestamps; re-encode it (e.g. to mp4)")
                self.decoded += 1
                self._last = int(np.searchsorted(self._times, frame.pts))
                if frame.pts > target:
                    break
                self._keep(self._last, frame.to_ndarray(format="rgb24"))
                if frame.pts == target:
                    return self._cache[index]
        self._decoder = None
        raise ValueError(f"could not decode frame {index} of {len(self)} of video {self.path}: is the file truncated?")

    def _keep(self, index: int, image: np.ndarray) -> None:
        self._cache[index] = image
        self._cache.move_to_end(index)
        while len(self._cache) > max(1, self.cache_bytes // image.nbytes):
            self._cache.popitem(last=False)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn PyAV's errors into a ``ValueError`` that names the file."""
        try:
            yield
        except self._av.FFmpegError as error:
            raise ValueError(f"cannot {doing} video {self.path}: {error}. Is the file damaged?") from error

    def close(self) -> None:
        self._container.close()
