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


# -- videos (the track operator) ---------------------------------------------------------------------
VIDEO_FRAMES = 8


def tracking_scene(seed: int = 0):
    """A synthetic tracking scene of VIDEO_FRAMES SIZE x SIZE frames: two nuclei drifting at up to 2 px
    per frame, present on every frame; ``.frames`` (T, H, W) uint8, ``.truth`` Tracks (ids 1, 2)."""
    from unisam.data.synthetic.tracking import generate_tracking_scene

    rng = np.random.default_rng(seed)
    return generate_tracking_scene(rng, VIDEO_FRAMES, (SIZE, SIZE), objects=2, events=(), radius=(10, 13), speed=2.0)


def write_video(path: Path, frames: np.ndarray) -> Path:
    """(T, H, W) uint8 frames as an H.264 mp4 (PyAV), lossless up to the RGB/YUV rounding (crf 0, yuv444p)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        for frame in frames:
            rgb = np.repeat(frame[..., None], 3, axis=-1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def truth_by_id(truth) -> list[dict[int, np.ndarray]]:
    """Per frame {id: (H, W) bool mask} of a scene's truth Tracks."""
    return [dict(zip(found.ids.tolist(), found.masks)) for found in truth]
