""":class:`Sample`, what every generator returns, and the label-map -> masks step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("shapes", "nuclei", "cells", "brightfield")
MIN_AREA = 16  # pixels; smaller visible parts are not annotated


@dataclass(frozen=True)
class Sample:
    """One synthetic image and its instances.

    image: (H, W, 3) uint8 RGB, (H, W) uint8 grey or (H, W) uint16 grey (see :mod:`unisam.data.synthetic`).
    masks: (N, H, W) bool, visible part of each object; disjoint, each >= MIN_AREA pixels.
    ids: (N,) int64 object identities (>= 1, increasing), stable across a sequence's frames.
    kind: one of :data:`KINDS`.
    """

    image: np.ndarray
    masks: np.ndarray
    ids: np.ndarray
    kind: str

    @property
    def bit_depth(self) -> int:
        """16 for uint16 images, else 8."""
        return 16 if self.image.dtype == np.uint16 else 8


def collect(image: np.ndarray, label: np.ndarray, kind: str) -> Sample:
    """Label map (H, W) int (0 background, id > 0) -> Sample with the ids covering >= MIN_AREA pixels."""
    counts = np.bincount(label.ravel())
    keep = np.flatnonzero(counts >= MIN_AREA)
    keep = keep[keep > 0]
    index = np.full(counts.size, -1, np.intp)
    index[keep] = np.arange(keep.size)
    flat = index[label.ravel()]
    where = np.flatnonzero(flat >= 0)
    masks = np.zeros((keep.size, label.size), bool)
    masks[flat[where], where] = True
    return Sample(image, masks.reshape(keep.size, *label.shape), keep.astype(np.int64), kind)
