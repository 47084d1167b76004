"""SAM's image and prompt preprocessing in NumPy/Pillow: resize the longest side, normalise, pad.

Coordinates are pixel ``(x, y)`` in the original image; the model sees them scaled by the same
factors as the image (``new_w / W`` horizontally, ``new_h / H`` vertically).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``(new_h, new_w)`` of an ``h x w`` image resized so that its longest side is ``long_side``.

    Each side is ``side * long_side / max(h, w)`` rounded half up, as SAM does.
    """
    if h <= 0 or w <= 0 or long_side <= 0:
        raise ValueError(f"sizes must be positive, got h={h}, w={w}, long_side={long_side}")
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 to ``(new_h, new_w, 3)`` uint8 with Pillow's bilinear filter (SAM's path)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR)
    return np.asarray(resized)


def normalize_and_pad(
    image: np.ndarray,
    long_side: int,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
) -> np.ndarray:
    """``(h, w, 3)`` uint8 -> ``(1, 3, long_side, long_side)`` float32: ``(x - mean) / std``, zero-padded
    at the bottom and right."""
    h, w = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or h > long_side or w > long_side:
        raise ValueError(f"expected an (h, w, 3) image with h, w <= {long_side}, got {image.shape}")
    mean = np.asarray(pixel_mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pixel_std, dtype=np.float32).reshape(3, 1, 1)
    chw = image.transpose(2, 0, 1).astype(np.float32)
    out = np.zeros((1, 3, long_side, long_side), dtype=np.float32)
    out[0, :, :h, :w] = (chw - mean) / std
    return out


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Map ``(..., 2)`` pixel ``(x, y)`` in an ``(H, W)`` image to the resized image's frame (float32)."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape[-1:] != (2,):
        raise ValueError(f"coords must have shape (..., 2), got {coords.shape}")
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    scale = np.array([new_w / old_w, new_h / old_h])
    return (coords * scale).astype(np.float32)


def scale_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Map ``(..., 4)`` pixel ``(x1, y1, x2, y2)`` boxes to the resized image's frame (float32)."""
    boxes = np.asarray(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {boxes.shape}")
    corners = scale_coords(boxes.reshape(*boxes.shape[:-1], 2, 2), original_size, long_side)
    return corners.reshape(boxes.shape)
