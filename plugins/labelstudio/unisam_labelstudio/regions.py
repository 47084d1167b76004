"""Label Studio regions <-> unisam prompts and masks.

Label Studio gives region geometry in percent (0-100) of the image's width and height; unisam wants
original-image pixels. Smart-tool clicks arrive as ``keypointlabels`` / ``rectanglelabels`` regions in
``params.context.result``; masks go back as ``brushlabels`` regions holding Label Studio's brush RLE.
On video, a smart ``videorectangle`` arrives with its keyframe ``sequence`` and goes back with the
tracked frames appended.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np
from label_studio_sdk.converter import brush

POINT_TYPES = ("keypointlabels", "keypoint")
BOX_TYPES = ("rectanglelabels", "rectangle")
VIDEO_BOX_TYPE = "videorectangle"


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


def brush_mask(region: dict) -> np.ndarray:
    """The (H, W) bool mask of a ``brushlabels`` region (Label Studio RLE); ``ValueError`` if unreadable."""
    value = region.get("value") if isinstance(region, dict) else None
    try:
        height, width = int(region["original_height"]), int(region["original_width"])
        if not isinstance(value, dict) or value.get("format") != "rle":
            raise ValueError("not an RLE brush region")
        rgba = np.asarray(brush.decode_rle(value["rle"]))
        return rgba.reshape(height, width, 4)[:, :, 3] > 0
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"cannot read brush region {region.get('id') if isinstance(region, dict) else region!r}: {error}") from None


@dataclass(frozen=True)
class VideoBox:
    """A smart ``videorectangle`` region: the box the annotator drew and its keyframes.

    id: the region id; label: its label (``value.labels``), or None; to_name: the video tag's name;
    sequence: the region's keyframe items as sent (frame 1-based, x, y, width, height percent,
    rotation, enabled, time seconds); frame: the 0-based frame of the latest enabled item, the one
    tracking starts from; box: its (4,) x, y, width, height percent; rotation: its degrees;
    frames_count, duration: the video's frame count and seconds as Label Studio reports them, or None.
    """

    id: str | None
    label: str | None
    to_name: str | None
    sequence: list[dict]
    frame: int
    box: np.ndarray
    rotation: float
    frames_count: int | None
    duration: float | None

    def in_pixels(self, width: int, height: int) -> np.ndarray:
        """The drawn box as x1, y1, x2, y2 pixels of a ``width`` x ``height`` frame (a rotated box:
        the bounding box of its corners, clipped to the frame)."""
        return _box_pixels(self.box * np.array([width, height] * 2) / 100, self.rotation, width, height)

    def seconds(self, frame: int) -> float | None:
        """The time (s) of 0-based ``frame`` from Label Studio's frame count and duration, or None."""
        if not self.frames_count or not self.duration:
            return None
        return frame * self.duration / self.frames_count


def parse_video_context(context: object) -> VideoBox:
    """The last ``videorectangle`` region of a ``params.context`` = ``{"result": [region, ...]}``.
    Raises ValueError when there is none, its sequence has no enabled item, or a coordinate is
    not a number in 0-100 or a frame not an integer >= 1."""
    results = context.get("result") if isinstance(context, dict) else None
    if not isinstance(results, list):
        raise ValueError("params.context must be an object with a 'result' list of smart-tool regions")
    regions = [r for r in results if isinstance(r, dict) and r.get("type") == VIDEO_BOX_TYPE]
    if not regions:
        raise ValueError("the smart-tool context holds no videorectangle: draw a box with a smart VideoRectangle")
    region = regions[-1]
    value = region.get("value")
    sequence = value.get("sequence") if isinstance(value, dict) else None
    if not isinstance(sequence, list) or not all(isinstance(item, dict) for item in sequence):
        raise ValueError("the videorectangle has no value.sequence list of keyframe boxes")
    enabled = [item for item in sequence if item.get("enabled", True)]
    if not enabled:
        raise ValueError("the videorectangle's sequence has no enabled keyframe to track from")
    frames = [_frame_number(item) for item in enabled]
    item = enabled[int(np.argmax(frames))]
    box = np.array([_percent(item, key, VIDEO_BOX_TYPE) for key in ("x", "y", "width", "height")])
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"{VIDEO_BOX_TYPE} has zero width or height ({box[2]:g}% x {box[3]:g}%)")
    if box[0] + box[2] > 100 + 1e-6 or box[1] + box[3] > 100 + 1e-6:
        raise ValueError(f"the box on frame {max(frames)} reaches outside the frame (x + width, y + height > 100%)")
    count, duration = value.get("framesCount"), value.get("duration")
    return VideoBox(
        id=region.get("id"),
        label=(value.get("labels") or [None])[0],
        to_name=region.get("to_name"),
        sequence=sequence,
        frame=max(frames) - 1,
        box=box,
        rotation=float(item.get("rotation") or 0.0),
        frames_count=int(count) if isinstance(count, (int, float)) and count > 0 else None,
        duration=float(duration) if isinstance(duration, (int, float)) and duration > 0 else None,
    )


def _frame_number(item: dict) -> int:
    frame = item.get("frame")
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
        raise ValueError(f"a videorectangle sequence item needs 'frame', a frame number >= 1; got {frame!r}")
    return frame


def video_box_item(
    box: np.ndarray, frame: int, width: int, height: int, *, seconds: float | None, enabled: bool = True
) -> dict:
    """A videorectangle sequence item for x1, y1, x2, y2 pixels ``box`` on 0-based ``frame``
    (Label Studio: 1-based frame, percent of the ``width`` x ``height`` frame)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    item = {
        "frame": frame + 1,
        "enabled": enabled,
        "x": x1 * 100 / width,
        "y": y1 * 100 / height,
        "width": (x2 - x1) * 100 / width,
        "height": (y2 - y1) * 100 / height,
        "rotation": 0,
    }
    if seconds is not None:
        item["time"] = seconds
    return item


def video_box_region(
    drawn: VideoBox, items: list[dict], *, from_name: str, to_name: str, label: str | None, score: float
) -> dict:
    """The ``videorectangle`` region of ``drawn`` (same id, label): its sequence up to the frame tracked
    from (later, disabled items were an old end of the track), then ``items``."""
    kept = [item for item in drawn.sequence if item["frame"] <= drawn.frame + 1]
    value: dict = {"sequence": kept + items}
    if drawn.frames_count is not None:
        value["framesCount"] = drawn.frames_count
    if drawn.duration is not None:
        value["duration"] = drawn.duration
    if label is not None:
        value["labels"] = [label]
    return {
        "id": drawn.id or uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": to_name,
        "type": VIDEO_BOX_TYPE,
        "origin": "manual",
        "value": value,
        "score": float(score),
    }
