"""Label Studio regions <-> unisam prompts and masks.

Label Studio gives region geometry in percent (0-100) of the image's width and height; unisam wants
original-image pixels. Smart-tool clicks arrive as ``keypointlabels`` / ``rectanglelabels`` regions in
``params.context.result``; masks go back as ``brushlabels`` regions holding Label Studio's brush RLE.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np
from label_studio_sdk.converter import brush

POINT_TYPES = ("keypointlabels", "keypoint")
BOX_TYPES = ("rectanglelabels", "rectangle")


@dataclass(frozen=True)
class Clicks:
    """One object prompted with smart tools, in Label Studio's percent coordinates.

    points: (N, 2) float x, y percent, or None; point_labels: (N,) 1 = positive click, 0 = negative, or None;
    box: (4,) float x, y, width, height percent and rotation: its degrees (the last rectangle), or None;
    label: the label the annotator chose (from the last region), or None; to_name: the image tag's
    name; original_size: (width, height) pixels of the image as Label Studio shows it, or None.
    """

    points: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None
    rotation: float
    label: str | None
    to_name: str | None
    original_size: tuple[int, int] | None

    def in_pixels(self, width: int, height: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(points (N, 2) x, y pixels, point_labels (N,), box x1, y1, x2, y2 pixels) for a ``width`` x
        ``height`` image; a rotated box becomes the bounding box of its corners, clipped to the image.
        Raises ValueError when Label Studio's original size disagrees with the image."""
        if self.original_size is not None and self.original_size != (width, height):
            w, h = self.original_size
            raise ValueError(
                f"Label Studio shows this image as {w}x{h} pixels but the backend loaded it as "
                f"{width}x{height}; the task's image URL must point to the image being annotated"
            )
        size = np.array([width, height], np.float64)
        points = None if self.points is None else self.points * size / 100
        box = None if self.box is None else _box_pixels(self.box * np.tile(size, 2) / 100, self.rotation, width, height)
        return points, self.point_labels, box


def parse_context(context: object) -> Clicks:
    """Read the smart-tool regions of a ``params.context`` = ``{"result": [region, ...]}``.

    Every keypoint becomes a click (``is_positive`` false = negative click, absent = positive); the last
    rectangle becomes the box. Other region types are ignored. Raises ValueError when there is no
    keypoint or rectangle, or a coordinate is not a number in 0-100.
    """
    results = context.get("result") if isinstance(context, dict) else None
    if not isinstance(results, list):
        raise ValueError("params.context must be an object with a 'result' list of smart-tool regions")
    points, labels, box, rotation, label, to_name, size = [], [], None, 0.0, None, None, None
    for region in results:
        kind = region.get("type") if isinstance(region, dict) else None
        if kind not in POINT_TYPES + BOX_TYPES:
            continue
        value = region.get("value")
        if not isinstance(value, dict):
            raise ValueError(f"{kind} region has no 'value' object: {region!r}")
        if kind in POINT_TYPES:
            points.append([_percent(value, key, kind) for key in ("x", "y")])
            labels.append(0 if region.get("is_positive") is False else 1)
        else:
            box = np.array([_percent(value, key, kind) for key in ("x", "y", "width", "height")])
            if box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"{kind} has zero width or height ({box[2]:g}% x {box[3]:g}%)")
            rotation = float(value.get("rotation") or 0.0)
        label = (value.get(kind) or value.get("labels") or [label])[0]
        to_name = region.get("to_name", to_name)
        if region.get("original_width") and region.get("original_height"):
            size = (int(region["original_width"]), int(region["original_height"]))
    if not points and box is None:
        raise ValueError(
            "the smart-tool context holds no keypoint and no rectangle: click on the object with a "
            "smart KeyPointLabels tool or draw a smart RectangleLabels box"
        )
    return Clicks(
        points=np.array(points, np.float64) if points else None,
        point_labels=np.array(labels, np.float64) if points else None,
        box=box,
        rotation=rotation,
        label=label,
        to_name=to_name,
        original_size=size,
    )


def _percent(value: dict, key: str, kind: str) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ValueError(f"{kind} value.{key} must be a number of percent (0-100); got {number!r}")
    if not 0 <= number <= 100:
        raise ValueError(
            f"{kind} value.{key} = {number:g} is outside 0-100 (Label Studio coordinates are percent of "
            "the image width and height)"
        )
    return float(number)


def _box_pixels(box: np.ndarray, rotation: float, width: int, height: int) -> np.ndarray:
    """x, y, w, h pixels rotated clockwise by ``rotation`` degrees about (x, y) -> x1, y1, x2, y2 of
    the corners' bounding box, clipped to the image."""
    x0, y0, w, h = box
    angle = math.radians(rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]])
    xs = x0 + corners[:, 0] * cos - corners[:, 1] * sin
    ys = y0 + corners[:, 0] * sin + corners[:, 1] * cos
    return np.array([max(xs.min(), 0.0), max(ys.min(), 0.0), min(xs.max(), float(width)), min(ys.max(), float(height))])


def brush_region(mask: np.ndarray, *, from_name: str, to_name: str, label: str, score: float) -> dict:
    """A ``brushlabels`` result region for a (H, W) bool mask: Label Studio RLE at the original size."""
    height, width = mask.shape
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
        "score": float(score),
        "readonly": False,
    }
