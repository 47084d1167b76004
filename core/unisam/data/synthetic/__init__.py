"""Synthetic images with exact instance masks, for training, distillation and tracking tests.

NumPy + SciPy + Pillow only (pycocotools for :func:`write_coco`); no torch. Four kinds of scene, one
module each:

``"shapes"``      (:mod:`.shapes`) polygons, rectangles, ellipses, stars, rings, blobs, capsules and
                  noise blobs with texture and shading, touching and occluding each other, with cast
                  shadows, over 1/f-noise backgrounds with unlabeled clutter; colour or grey. Image
                  (H, W, 3) uint8.
``"nuclei"``      (:mod:`.nuclei`) fluorescence nuclei, bright on dark, alone and in touching clusters,
                  with chromatin texture, PSF blur, shot + read noise and uneven illumination. Image
                  (H, W) uint16 (camera counts: offset 100-500, signal up to a few thousand), (H, W)
                  uint8, or (H, W, 3) uint8 pseudo-colour.
``"cells"``       (:mod:`.cells`) fluorescence whole cells (cytoplasm or membrane stain) that touch and
                  tile, each with a nucleus. Image (H, W) uint16 or (H, W) uint8 for one channel, or
                  (H, W, 3) uint8 for a two-channel composite (cells in green, red or yellow, nuclei in
                  blue).
``"brightfield"`` (:mod:`.brightfield`) transmitted-light cells (defocused brightfield, phase contrast
                  with halos, DIC-like relief) on grey, with dust and debris. Image (H, W) uint8 or
                  tinted (H, W, 3) uint8.

Shared pieces: :mod:`.noise` (random draws, noise textures, illumination), :mod:`.bodies` (outlines,
poses, motion, placement), :mod:`.render` (z-buffer and :class:`~.render.Scene`, the renderer of
every kind), :mod:`.camera` (blur, JPEG, fluorescence cameras), :mod:`.coco` (COCO export).
:mod:`.tracking` (:func:`generate_tracking_scene`) builds tracking scenes whose truth is a
:class:`unisam.tracks.Tracks`: nuclei that touch, cross, leave, enter and divide, with lineage.

``Sample.image`` is what a user would load from a file; ``unisam.images.load_image`` turns any of
them into the RGB uint8 the model sees. ``Sample.masks`` holds the *visible* part of each object
(for shapes the later-painted object wins; where cells touch, the one whose centre is nearer
relative to its size wins): pairwise disjoint, each at least :data:`MIN_AREA` pixels. Objects
below that (fully occluded, mostly outside the frame) are left out of the annotations; the few
pixels they may leave stay in the image as clutter. Object ``ids`` start at 1 and are stable across
the frames of :func:`generate_sequence`. Sample sizes: at least 32 px a side; object sizes are in
pixels (not relative to the frame) for the microscopy kinds, so larger frames hold more objects.
Output is a pure function of the generator's state (the shipped model's recipe depends on it).

Preview: ``python -m unisam.data.synthetic preview.png``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from ...images import load_image
from .brightfield import brightfield
from .cells import cells
from .coco import write_coco
from .nuclei import nuclei
from .render import Scene
from .sample import KINDS, MIN_AREA, Sample, collect
from .shapes import shapes
from .tracking import EVENTS, TrackingScene, generate_tracking_scene

__all__ = ["EVENTS", "KINDS", "MIN_AREA", "Sample", "SyntheticDataset", "TrackingScene", "contact_sheet",
           "generate_kind_mosaic", "generate_sample", "generate_sequence", "generate_tracking_scene", "write_coco"]

BUILDERS: dict[str, Callable[[np.random.Generator, tuple[int, int], bool], Scene]] = {
    "shapes": shapes, "nuclei": nuclei, "cells": cells, "brightfield": brightfield,
}


def _check(size: tuple[int, int], kind: str | None) -> tuple[int, int]:
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (H, W) with both sides >= 32, got {size}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return int(size[0]), int(size[1])


def generate_sample(rng: np.random.Generator, size: tuple[int, int] = (256, 256), kind: str | None = None) -> Sample:
    """One random image of ``kind`` (random kind when None) with its instance masks; ``size`` (H, W) px."""
    size = _check(size, kind)
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    image, label = BUILDERS[kind](rng, size, False)(0.0, rng)
    return collect(image, label, kind)


def generate_sequence(rng: np.random.Generator, n_frames: int, size: tuple[int, int] = (256, 256),
                      kind: str = "shapes") -> list[Sample]:
    """``n_frames`` frames of one scene whose objects drift, spin and grow/shrink slightly, entering
    and leaving the frame; an object keeps its id in every frame where it is visible."""
    size = _check(size, kind)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    scene = BUILDERS[kind](rng, size, True)
    return [collect(*scene(float(t), rng), kind) for t in range(n_frames)]


def generate_kind_mosaic(
    rng: np.random.Generator, size: tuple[int, int] = (256, 256)
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An RGB uint8 image of 2 x 2 tiles, one scene of each kind in :data:`KINDS` in random places,
    with its ``(N, H, W)`` masks and each object's kind as its class name (for labeling by example:
    distinct kinds of objects in one image, where the tile a kind lands in tells nothing)."""
    h, w = _check(size, None)
    if min(h, w) < 64:
        raise ValueError(f"a mosaic needs both sides >= 64 (tiles of >= 32), got {size}")
    image = np.zeros((h, w, 3), np.uint8)
    masks, labels = [], []
    tiles = [(slice(0, h // 2), slice(0, w // 2)), (slice(0, h // 2), slice(w // 2, w)),
             (slice(h // 2, h), slice(0, w // 2)), (slice(h // 2, h), slice(w // 2, w))]
    for kind, (ys, xs) in zip(rng.permutation(KINDS), tiles):
        sample = generate_sample(rng, (ys.stop - ys.start, xs.stop - xs.start), str(kind))
        image[ys, xs] = load_image(sample.image)
        for m in sample.masks:
            full = np.zeros((h, w), bool)
            full[ys, xs] = m
            masks.append(full)
            labels.append(str(kind))
    return image, np.asarray(masks, bool).reshape(-1, h, w), labels


class SyntheticDataset:
    """``n`` deterministic samples: item i depends only on (seed, i); kinds cycle with i."""

    def __init__(self, n: int, size: tuple[int, int] = (256, 256), seed: int = 0, kinds: Sequence[str] = KINDS):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not kinds:
            raise ValueError("kinds must not be empty")
        for k in kinds:
            _check(size, k)
        self.n, self.size, self.seed, self.kinds = n, tuple(size), seed, tuple(kinds)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        rng = np.random.default_rng([self.seed, i])
        return generate_sample(rng, self.size, self.kinds[i % len(self.kinds)])


def contact_sheet(samples: Sequence[Sample], cols: int = 8, outlines: bool = False) -> np.ndarray:
    """(rows * (H + 2), cols * (W + 2), 3) uint8 grid of the samples' images (all of one size, shown
    as ``load_image`` converts them), optionally with each mask's outline in a colour set by its id."""
    h, w = samples[0].image.shape[:2]
    rows = -(-len(samples) // cols)
    sheet = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for k, s in enumerate(samples):
        tile = load_image(s.image).copy()
        if outlines:
            for obj, mask in zip(s.ids, s.masks):
                edge = mask & ~ndimage.binary_erosion(mask)
                tile[edge] = (np.array(colorsys.hsv_to_rgb((obj * 0.618) % 1, 1, 1)) * 255).astype(np.uint8)
        r, c = divmod(k, cols)
        sheet[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tile
    return sheet
