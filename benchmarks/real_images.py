"""How a model trained only on synthetic data does on real photographs and micrographs.

Uses the images bundled with scikit-image (no download): ``coins`` (grey photo, 24 coins),
``horse`` (a binary silhouette, its own ground truth), ``cell`` (phase-contrast cell),
``immunohistochemistry`` (stained tissue), ``chelsea`` (cat), ``coffee`` (cup).

Scores where a reference can be made without annotation: coins (Otsu threshold on a smoothed image,
holes filled, split into connected components = one mask per coin; one box and one centre click per
coin) and horse (the silhouette, boxed). The rest get a click at a hand-chosen spot and are drawn into
``--out`` (a contact sheet PNG) to be looked at.

    pip install scikit-image && python benchmarks/real_images.py --model unisam-tiny --out real.png
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image
from scipy import ndimage

import unisam

# (image name, click x, y) for the images judged by eye: the object under the click
CLICKS = (("cell", 425, 380), ("chelsea", 174, 111), ("coffee", 250, 150), ("immunohistochemistry", 230, 260))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], float)


def coin_masks(image: np.ndarray) -> list[np.ndarray]:
    """Reference coins: Otsu threshold of the smoothed image, holes filled, components >= 300 px."""
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(image.astype(float), 2)
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(smooth > threshold_otsu(smooth), iterations=2))
    label, n = ndimage.label(fg)
    return [label == i for i in range(1, n + 1) if (label == i).sum() >= 300]


def overlay(image: np.ndarray, mask: np.ndarray, xy: tuple[int, int] | None) -> np.ndarray:
    rgb = unisam.images.load_image(image).astype(float)
    rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([255, 0, 255])
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = (255, 255, 0)
    if xy is not None:
        x, y = xy
        rgb[max(y - 3, 0): y + 4, max(x - 3, 0): x + 4] = (0, 255, 0)
    return rgb.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", default="real_images.png")
    args = parser.parse_args()
    from skimage import data

    model = unisam.get_model(args.model)
    print(f"model: {model.name}")

    coins = data.coins()
    ref = coin_masks(coins)
    boxes = unisam.segment(coins, [unisam.Prompt(box=_box(m)) for m in ref], model=model)
    centres = []
    for m in ref:
        d = ndimage.distance_transform_edt(m)
        y, x = np.unravel_index(d.argmax(), d.shape)
        centres.append(unisam.Prompt(points=np.array([[x, y]], float)))
    clicks = unisam.segment(coins, centres, model=model)
    print(f"coins: {len(ref)} reference coins; mIoU box {np.mean([_iou(p, g) for p, g in zip(boxes.masks, ref)]):.3f}, "
          f"centre click {np.mean([_iou(p, g) for p, g in zip(clicks.masks, ref)]):.3f}")

    horse = ~data.horse()  # True on the horse
    got = unisam.segment(horse.astype(np.uint8) * 255, box=_box(horse), model=model)
    print(f"horse silhouette: box IoU {_iou(got.masks[0], horse):.3f}")

    tiles = [overlay(coins, boxes.masks.any(0), None)]
    for name, x, y in CLICKS:
        image = getattr(data, name)()
        result = unisam.segment(image, points=[[x, y]], model=model)
        frac = result.masks[0].mean()
        print(f"{name}: click ({x}, {y}) -> mask of {frac:.1%} of the image, predicted IoU {result.scores[0]:.2f}")
        tiles.append(overlay(image, result.masks[0], (x, y)))
    height = 256
    row = [np.asarray(Image.fromarray(t).resize((round(t.shape[1] * height / t.shape[0]), height))) for t in tiles]
    Image.fromarray(np.concatenate(row, 1)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
