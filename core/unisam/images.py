"""Turn any image input into the validated ``(H, W, 3)`` uint8 RGB array that the runtime expects.

Accepted inputs: a file path (PNG, JPEG, BMP, TIFF, ... ), a PIL image of any mode, or a NumPy array
``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (alpha is dropped, not composited).

Intensity conversion to uint8:

- uint8: unchanged;
- bool: ``False -> 0``, ``True -> 255``;
- any other integer type (uint16, int32, ...) and every float image: a linear stretch of the
  0.5th..99.5th percentiles (taken over all pixels and channels together, so colours keep their
  balance) to 0..255, clipped. When those percentiles coincide (e.g. a few bright spots on a flat
  background) the minimum..maximum range is used instead; a constant image becomes all zeros, since
  it carries no structure to segment. Floats in ``[0, 1]`` are stretched too: a 16-bit micrograph
  converted with ``skimage.util.img_as_float`` fills only a few percent of that range (HeLa nuclei
  from the Cell Tracking Challenge: 0.503..0.524), and scaling it by 255 left the model a flat grey
  image (box mIoU 0.60 instead of 0.80 on the same frame, ``benchmarks/real_images.py``). The
  stretch is per image; a stack's slices are stretched one by one, which on the real time-lapses
  and z-stacks of ``benchmarks/real_images.py`` gave the same box mIoU as one stretch per stack
  (within 0.01, 0.03 on a dim top z-slice).

Files keep their full bit depth until that conversion: 16-bit grayscale and RGB(A) PNGs are read at
16 bits, TIFFs through ``tifffile`` when it is installed (first page; planar RGB is handled), EXIF
orientation is applied to photos (``PIL.ImageOps.exif_transpose``), so the array, and so every mask
and prompt coordinate, is the image as viewers display it. Palette images are expanded through their
colour map; alpha is dropped.

Files are checked before they are decoded: one whose header claims more than :func:`max_pixels`
pixels (Pillow's decompression-bomb limit, ``2 * PIL.Image.MAX_IMAGE_PIXELS`` = 178,956,970 by
default, e.g. 13377 x 13377) is refused with a ``ValueError`` naming its size and the limit; raise
``PIL.Image.MAX_IMAGE_PIXELS`` to allow larger files (``None`` turns the check off). An empty,
truncated or unrecognised file is a ``ValueError`` that says which. Arrays and PIL images are already
in memory and are not limited.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5

_TIFF_SUFFIXES = (".tif", ".tiff")
# words of Pillow's and tifffile's messages for a file that ends early
_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
          (b"GIF8", "GIF"), (b"RIFF", "WebP"))
_TRUNCATED_WORDS = ("truncated", "failed to read", "unexpected end", "not enough data", "buffer is too small")
# Pillow reads 16-bit colour PNGs at 8 bits (high byte); decoding again with a little-endian raw mode
# yields the low byte of each sample, from which the 16-bit values are rebuilt.
_PNG16_LOW_BYTE_RAWMODES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def load_image(source: Any) -> np.ndarray:
    """Load and validate an image: a path, a PIL image or an ndarray -> ``(H, W, 3)`` uint8 RGB.

    The result is C-contiguous. Raises ``ValueError`` (``FileNotFoundError`` for a missing file) with
    a message that names the problem and how to fix it.
    """
    if isinstance(source, (str, os.PathLike)):
        array = _read_file(Path(source))
    elif isinstance(source, Image.Image):
        array = _pil_to_array(source)
    elif isinstance(source, np.ndarray):
        array = source
    else:
        raise ValueError(
            f"unsupported image type {type(source).__name__}; pass a file path, a PIL image or a "
            "numpy array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    return _array_to_rgb8(array)


def image_digest(image: np.ndarray) -> str:
    """A stable content hash (32 hex chars) of an array's shape, dtype and bytes; the embedding-cache key."""
    image = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.shape}|{image.dtype.str}|".encode())
    h.update(image.reshape(-1).view(np.uint8) if image.size else b"")
    return h.hexdigest()


def max_pixels() -> int | None:
    """The most pixels (width x height) an image file may have: twice ``PIL.Image.MAX_IMAGE_PIXELS``,
    the size at which Pillow itself refuses a file as a decompression bomb (None: no limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


class _TooLarge(ValueError):
    """An image file over :func:`max_pixels` (never handed to another reader)."""


def _check_pixels(path: Path, width: int, height: int) -> None:
    limit = max_pixels()
    if limit is not None and width * height > limit:
        raise _TooLarge(
            f"image {path} is {width} x {height} = {width * height:,} pixels, more than the limit of "
            f"{limit:,} pixels (a decompression bomb, or a huge scan); if you trust the file, raise "
            "PIL.Image.MAX_IMAGE_PIXELS"
        )


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    if path.suffix.lower() in _TIFF_SUFFIXES:
        try:
            return _read_tiff(path)
        except ImportError:
            pass  # no tifffile: Pillow reads most TIFFs (at 8 bits per colour channel)
        except _TooLarge:
            raise
        except Exception as tiff_error:  # unusual codec or corrupt file: give Pillow a chance
            try:
                return _read_with_pil(path)
            except _TooLarge:
                raise
            except ValueError as pil_error:
                with open(path, "rb") as f:
                    is_tiff = f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
                if not is_tiff:  # named .tif but no TIFF at all: Pillow's verdict says what it is not
                    raise pil_error
                raise _unreadable(path, tiff_error) from tiff_error
    return _read_with_pil(path)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_pixels(path, int(page.imagewidth), int(page.imagelength))
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE:
            return _read_with_pil(path)  # Pillow applies the colour map
        array = page.asarray()
        if array.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
            array = np.moveaxis(array, 0, -1)  # (S, H, W) -> (H, W, S)
    return array


def _read_with_pil(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # between MAX_IMAGE_PIXELS and max_pixels() Pillow only warns; the file is read
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # e.g. "Corrupt EXIF data"
            with Image.open(path) as img:
                _check_pixels(path, *img.size)
                array = _png16_colour(path, img)
                if array is not None:
                    return array
                img.load()
                return _pil_to_array(ImageOps.exif_transpose(img))
    except _TooLarge:
        raise
    except Image.DecompressionBombError as error:  # Pillow's check in Image.open, before the size is known
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ValueError(
            f"image {path} has {size}, more than the limit of {max_pixels():,} pixels (a decompression "
            "bomb, or a huge scan); if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: BaseException) -> ValueError:
    """The one-line error for a file no reader could decode: truncated, or not an image at all."""
    detail = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, UnidentifiedImageError):
        with open(path, "rb") as f:
            start = f.read(8)
        kind = next((name for magic, name in _MAGIC if start.startswith(magic)), None)
        if kind is not None:  # the signature is there but Pillow found no readable header after it
            return ValueError(f"cannot read image {path}: a truncated or corrupt {kind} file (its header is incomplete)")
        return ValueError(
            f"cannot read image {path}: not an image format Pillow knows (the file starts with {start!r}); "
            "give a PNG, JPEG, BMP or TIFF file"
        )
    if isinstance(error, EOFError) or any(word in detail.lower() for word in _TRUNCATED_WORDS):
        return ValueError(f"cannot read image {path}: truncated ({detail}); the file is incomplete, copy it again")
    return ValueError(
        f"cannot read image {path}: {detail}; the file may be truncated or corrupt "
        "(is it a complete PNG, JPEG, BMP or TIFF file?)"
    )


def _png16_colour(path: Path, img: Image.Image) -> np.ndarray | None:
    """The full 16-bit ``(H, W, C)`` uint16 array of a 16-bit RGB(A) PNG; None for any other image.

    ``img`` must not be loaded yet (Pillow forgets the raw mode once it has decoded the pixels).
    """
    if img.format != "PNG" or len(img.tile) != 1:
        return None
    codec, extents, offset, rawmode = tuple(img.tile[0])
    if rawmode not in _PNG16_LOW_BYTE_RAWMODES:
        return None
    high = np.asarray(img, dtype=np.uint16)
    with Image.open(path) as low_img:
        low_img.tile = [(codec, extents, offset, _PNG16_LOW_BYTE_RAWMODES[rawmode])]
        low = np.asarray(low_img, dtype=np.uint16)
    return (high << 8) | low


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image as an ndarray that keeps its bit depth: (H, W) for one channel, (H, W, 3|4) for colour."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=bool)
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(img)
    if mode in ("LA", "La"):
        return np.asarray(img)[..., 0]
    if mode in ("RGB", "RGBA"):
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))  # P, PA, CMYK, YCbCr, LAB, HSV, RGBX, RGBa, ...


def _array_to_rgb8(array: np.ndarray) -> np.ndarray:
    array = _validate_shape(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 4:
        array = array[:, :, :3]  # alpha must not take part in the intensity stretch
    array = _to_uint8(array)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _validate_shape(array: np.ndarray) -> np.ndarray:
    if array.dtype == object or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"unsupported image dtype {array.dtype}; pass a real-valued (integer, float or bool) array")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"unsupported image dtype {array.dtype}; pass an integer, float or bool array")
    if array.ndim not in (2, 3):
        hint = " (a batch? pass one image, e.g. images[0])" if array.ndim == 4 else ""
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got {array.ndim} dimensions {array.shape}{hint}")
    if array.size == 0:
        raise ValueError(f"image is empty: shape {array.shape} has a zero-size dimension")
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        if array.shape[0] in (1, 3, 4):
            raise ValueError(
                f"image of shape {array.shape} looks channel-first (C, H, W); transpose it to (H, W, C) "
                "with image.transpose(1, 2, 0)"
            )
        raise ValueError(f"image must have 1, 3 or 4 channels in its last dimension, got shape {array.shape}")
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    return _stretch_percentiles(array)


def _stretch_percentiles(array: np.ndarray) -> np.ndarray:
    """Linear map of the 0.5..99.5 percentile range (fallback: min..max) to 0..255, clipped."""
    values = array.astype(np.float64, copy=False)
    lo, hi = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:
        lo, hi = values.min(), values.max()
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
