"""Sample data: synthetic fluorescence nuclei generated on the fly (no download, no torch)."""

from __future__ import annotations

import numpy as np

from unisam.data.synthetic import generate_sample, generate_sequence

IMAGE_SEED = 0  # a 16-bit grey image with a few dozen nuclei, alone and in clusters
STACK_SEED = 4  # 16-bit grey frames with about twenty nuclei


def make_sample_data() -> list[tuple]:
    """A 256 x 256 uint16 image of nuclei, as napari LayerData."""
    sample = generate_sample(np.random.default_rng(IMAGE_SEED), (256, 256), "nuclei")
    return [(sample.image, {"name": "unisam nuclei"}, "image")]


def make_sample_stack() -> list[tuple]:
    """12 frames (192 x 192, uint16) of drifting nuclei as one (T, H, W) stack, to try propagation."""
    frames = generate_sequence(np.random.default_rng(STACK_SEED), 12, (192, 192), "nuclei")
    return [(np.stack([f.image for f in frames]), {"name": "unisam nuclei time-lapse"}, "image")]
