"""unisam.runtime.transforms against SAM's ResizeLongestSide and Sam.preprocess."""

import numpy as np
import pytest
import torch
from reference import install_reference_stubs

from unisam.registry import PIXEL_MEAN, PIXEL_STD
from unisam.runtime.transforms import (
    normalize_and_pad,
    preprocess_shape,
    resize_longest_side,
    scale_boxes,
    scale_coords,
)

install_reference_stubs()
from segment_anything.modeling import Sam  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

SHAPES = [(1, 1), (3, 700), (700, 3), (513, 1025), (1025, 513), (480, 640), (256, 256), (5, 2)]
LONG_SIDE = 1024


class _Encoder(torch.nn.Module):
    img_size = LONG_SIDE


def _reference_preprocess(resized: np.ndarray) -> np.ndarray:
    """Sam.preprocess on a resized uint8 image, as SamPredictor.set_image feeds it."""
    sam = Sam(_Encoder(), torch.nn.Identity(), torch.nn.Identity(), list(PIXEL_MEAN), list(PIXEL_STD))
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
    with torch.no_grad():
        return sam.preprocess(x).numpy()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h,w", SHAPES)
def test_preprocess_shape_matches_reference(h, w):
    for long_side in (1024, 512, 7):
        assert preprocess_shape(h, w, long_side) == ResizeLongestSide.get_preprocess_shape(h, w, long_side)


def test_preprocess_shape_rounding_sweep():
    for h in range(1, 60):
        for w in (1, 2, 3, 17, 59, 61, 1000):
            assert preprocess_shape(h, w, 64) == ResizeLongestSide.get_preprocess_shape(h, w, 64)


@pytest.mark.parametrize("h,w", SHAPES)
def test_resize_is_bit_exact(h, w):
    image = _image(h, w)
    ours = resize_longest_side(image, LONG_SIDE)
    ref = ResizeLongestSide(LONG_SIDE).apply_image(image)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert max(ours.shape[:2]) == LONG_SIDE
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 700), (700, 3), (513, 1025)])
def test_normalize_and_pad_matches_sam_preprocess(h, w):
    resized = ResizeLongestSide(LONG_SIDE).apply_image(_image(h, w, seed=1))
    ours = normalize_and_pad(resized, LONG_SIDE, PIXEL_MEAN, PIXEL_STD)
    ref = _reference_preprocess(resized)
    assert ours.shape == (1, 3, LONG_SIDE, LONG_SIDE) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    rh, rw = resized.shape[:2]
    assert not ours[:, :, rh:, :].any() and not ours[:, :, :, rw:].any()


def test_normalize_and_pad_rejects_oversize_input():
    with pytest.raises(ValueError, match="<= 16"):
        normalize_and_pad(_image(17, 4), 16, PIXEL_MEAN, PIXEL_STD)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 700), (700, 3), (513, 1025)])
def test_scale_coords_and_boxes_match_reference(h, w):
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, max(h, w), (4, 5, 2))
    boxes = rng.uniform(0, max(h, w), (6, 4))
    t = ResizeLongestSide(LONG_SIDE)
    ours_c = scale_coords(coords, (h, w), LONG_SIDE)
    ours_b = scale_boxes(boxes, (h, w), LONG_SIDE)
    assert ours_c.dtype == np.float32 and ours_c.shape == coords.shape
    assert ours_b.dtype == np.float32 and ours_b.shape == boxes.shape
    np.testing.assert_allclose(ours_c, t.apply_coords(coords, (h, w)), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(ours_b, t.apply_boxes(boxes, (h, w)), rtol=1e-6, atol=1e-4)


def test_scale_rejects_wrong_last_dim():
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        scale_coords(np.zeros((3, 3)), (10, 10), 16)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        scale_boxes(np.zeros((3, 2)), (10, 10), 16)
