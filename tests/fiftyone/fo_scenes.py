"""Synthetic scenes for the FiftyOne tests and what the core returns for them (the oracle)."""

from pathlib import Path

import numpy as np

import unisam

REPO = Path(__file__).resolve().parents[2]

SIZE = 128  # a power of two, so relative coordinates k / SIZE are exact in floating point
BACKGROUND_POINT = (3, 3)  # pixel x, y away from every disk


def draw_scene(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """A dark SIZE x SIZE RGB image with three bright, separated disks; their (H, W) bool masks."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = np.full((SIZE, SIZE, 3), 15, np.uint8)
    masks, centres = [], []
    while len(masks) < 3:
        r = int(rng.integers(10, 17))
        cx, cy = (int(v) for v in rng.integers(r + 10, SIZE - r - 2, size=2))
        if any(np.hypot(cx - x, cy - y) < r + rr + 6 for x, y, rr in centres):
            continue
        centres.append((cx, cy, r))
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        image[mask] = rng.integers(170, 256, size=3)
        masks.append(mask)
    return image, masks


def pixel_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Edges of a mask's bounding box in pixels: x1, y1 (first column/row), x2, y2 (last + 1)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(np.round(xs.mean())), float(np.round(ys.mean()))


def box_prompts(masks: list[np.ndarray]) -> list[unisam.Prompt]:
    """The box prompts the ``gt`` field stands for, built from the masks (not from FiftyOne labels)."""
    return [unisam.Prompt(box=np.array(pixel_box(m), float), label=f"obj{j}") for j, m in enumerate(masks)]


def point_prompts(masks: list[np.ndarray]) -> list[unisam.Prompt]:
    """The point prompts the ``kp`` field stands for: a foreground click at the centre, a background one."""
    return [
        unisam.Prompt(
            points=np.array([centre(m), BACKGROUND_POINT], float), point_labels=np.array([1.0, 0.0]), label=f"click{j}"
        )
        for j, m in enumerate(masks)
    ]


def stored_mask(detection) -> np.ndarray:
    """A stored Detection as a full (SIZE, SIZE) bool mask; checks that its mask spans its box."""
    x, y, w, h = (round(v * SIZE) for v in detection.bounding_box)
    crop = detection.get_mask()  # the inline mask, or the PNG at mask_path
    assert crop.shape == (h, w)
    full = np.zeros((SIZE, SIZE), bool)
    full[y : y + h, x : x + w] = crop.astype(bool)
    return full


def assert_matches_core(detections, result: unisam.Instances, labels: list[str]) -> None:
    """``detections`` (fo.Detections) hold exactly the non-empty masks of ``result`` (the core's output for
    the same prompts): same pixels, the box of those pixels, the predicted IoU as confidence, the label."""
    kept = [i for i in range(len(result)) if result.masks[i].any()]
    assert len(detections.detections) == len(kept)
    for detection, i in zip(detections.detections, kept):
        mask = result.masks[i]
        np.testing.assert_array_equal(stored_mask(detection), mask)
        ys, xs = np.nonzero(mask)
        box = [xs.min() / SIZE, ys.min() / SIZE, (np.ptp(xs) + 1) / SIZE, (np.ptp(ys) + 1) / SIZE]
        np.testing.assert_allclose(detection.bounding_box, box, atol=1e-12)
        assert abs(detection.confidence - float(result.scores[i])) < 1e-6
        assert detection.label == labels[i]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())
