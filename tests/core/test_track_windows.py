"""Predictor.upscale_windows, the tracker's mask upscaling: the same masks as the upscale graph
(``upscale(...) > 0``), computed only inside each mask's window."""

from __future__ import annotations

import numpy as np
import pytest

import unisam
from unisam import Prompt


@pytest.mark.parametrize("size", [(512, 512), (300, 517), (641, 480), (37, 90)])
def test_windows_equal_the_upscale_graph(size):
    model = unisam.get_model("unisam-tiny")
    rng = np.random.default_rng(sum(size))
    image = (rng.random((*size, 3)) * 255).astype(np.uint8)
    image[size[0] // 4 : size[0] // 2, size[1] // 3 : size[1] // 2] = 250  # one bright object
    embedding = model.embed(image)
    h, w = size
    corners = rng.uniform(0, 1, (12, 2)) * [w - 8, h - 8]
    prompts = [Prompt(box=np.array([x, y, min(x + 6 + w / 3, w), min(y + 6 + h / 4, h)])) for x, y in corners]
    logits = np.concatenate([low for low, _ in model.decode_prompts(embedding, prompts)])
    logits[0] = -1.0  # an empty mask
    logits[1] = 1.0  # a mask covering everything
    full = model.upscale(embedding, logits) > 0
    windows = model.upscale_windows(embedding, logits)
    assert full[2:].any(axis=(1, 2)).all() and not full[0].any() and full[1].all()
    for window, mask in zip(windows, full):
        assert window.area == np.count_nonzero(mask)
        np.testing.assert_array_equal(window.paste(size), mask)
        assert window.overlap(mask) == window.area
    assert sum(w.crop.size for w in windows[2:]) < 0.8 * full[2:].size  # windows, not whole images
