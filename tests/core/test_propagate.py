"""unisam.runtime.propagate with the bundled model on a drawn z-stack whose ground truth is exact."""

import numpy as np
import pytest
from scipy import ndimage

import unisam
from unisam.images import load_image
from unisam.runtime.propagate import mask_to_prompt, propagate, propagate_steps

Z, H, W = 16, 128, 128
START = 7
# Spherical nuclei cut by the z-planes: (centre y, centre x at the middle slice, drift y/x per slice,
# radius, middle slice, half-height in slices). The first one is followed; the others are neighbours.
NUCLEI = [(64, 50, 1.0, 0.8, 16, 7, 6), (30, 100, 0, 0, 10, 4, 10), (100, 100, 0, 0, 12, 12, 5)]
TARGET_SLICES = range(2, 13)  # where the first nucleus is visible (radius >= 2.5 px)


def nuclei_stack(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (Z, H, W) uint16 fluorescence-like stack (blur, offset, noise) and the (Z, H, W) bool mask of
    the first nucleus, which moves and grows then shrinks through the stack."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    signal = np.zeros((Z, H, W), np.float32)
    target = np.zeros((Z, H, W), bool)
    for k, (cy, cx, vy, vx, radius, mid, half) in enumerate(NUCLEI):
        for z in range(Z):
            d = (z - mid) / half
            r = radius * np.sqrt(max(0.0, 1 - d * d))
            if r < 2.5:
                continue
            disk = (yy - cy - vy * (z - mid)) ** 2 + (xx - cx - vx * (z - mid)) ** 2 <= r * r
            signal[z] += disk * rng.uniform(0.8, 1.2)
            if k == 0:
                target[z] = disk
    signal = np.stack([ndimage.gaussian_filter(s, 1.2) for s in signal])
    image = 200 + 2000 * signal + rng.normal(0, 60, signal.shape)
    return np.clip(image, 0, 65535).astype(np.uint16), target


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def stack():
    return nuclei_stack()


def test_mask_to_prompt_box_and_deep_points():
    yy, xx = np.mgrid[:40, :60]
    disk = (yy - 20) ** 2 + (xx - 30) ** 2 <= 8**2
    one = mask_to_prompt(disk)
    assert one.box.tolist() == [22, 12, 39, 29]  # pixel edges: columns 22..38, rows 12..28
    assert one.points.tolist() == [[30.5, 20.5]]  # the centre pixel is the innermost
    assert one.labels.tolist() == [1] and one.mask is None
    three = mask_to_prompt(disk, n_points=3)
    assert three.points[0].tolist() == [30.5, 20.5]
    cols, rows = (three.points - 0.5).astype(int).T
    assert disk[rows, cols].all()  # every point lies inside the mask, in its inner half
    assert np.hypot(three.points[1, 0] - 30.5, three.points[1, 1] - 20.5) >= 3.5  # spread out
    np.testing.assert_array_equal(mask_to_prompt(disk, n_points=3).points, three.points)  # deterministic
    assert mask_to_prompt(disk, n_points=0).points is None
    single = np.zeros((5, 5), bool)
    single[2, 3] = True
    assert mask_to_prompt(single).box.tolist() == [3, 2, 4, 3]
    with pytest.raises(ValueError, match="non-empty"):
        mask_to_prompt(np.zeros((5, 5), bool))


def test_propagation_follows_the_nucleus_and_stops_where_it_ends(stack):
    image, target = stack
    model = unisam.load_model("unisam-tiny")
    result = propagate(image, START, target[START], model=model)
    assert (result.first, result.last) == (TARGET_SLICES[0], TARGET_SLICES[-1])
    for z in TARGET_SLICES:
        assert iou(result.masks[z], target[z]) > 0.5, z
    outside = [z for z in range(Z) if z not in TARGET_SLICES]
    assert not result.masks[outside].any()
    assert np.isnan(result.scores[outside]).all() and np.isnan(result.scores[START])
    reached = [z for z in TARGET_SLICES if z != START]
    assert (result.scores[reached] >= 0.75).all()
    np.testing.assert_array_equal(result.masks[START], target[START])
    # each visited slice (the object's, plus the one per side where it was lost) was embedded once
    assert model.encoder_runs == len(reached) + 2
    again = propagate(image, START, target[START], model=model)
    assert model.encoder_runs == len(reached) + 2
    np.testing.assert_array_equal(again.masks, result.masks)


def test_steps_go_up_then_down_and_a_sequence_of_images_works(stack):
    image, target = stack
    steps = list(propagate_steps(image, START, target[START], model="unisam-tiny"))
    assert [s.index for s in steps] == [*range(START + 1, 13), *range(START - 1, 1, -1)]
    assert all(s.overlap >= 0.3 and s.mask.shape == (H, W) for s in steps)
    frames = [load_image(s) for s in image]  # a list of RGB uint8 frames: the same pixels the model saw
    result = propagate(frames, START, target[START])
    for s in steps:
        np.testing.assert_array_equal(result.masks[s.index], s.mask)


def test_thresholds_control_where_propagation_stops(stack):
    image, target = stack
    strict = propagate(image, START, target[START], model="unisam-tiny", min_overlap=0.99)
    assert (strict.first, strict.last) == (START, START)  # no slice matches the start mask that well
    lax = propagate(image, START, target[START], model="unisam-tiny", score_threshold=0.0, min_overlap=0.0)
    assert (lax.first, lax.last) == (0, Z - 1)  # nothing stops it: it runs to both ends


def test_bad_input_is_rejected(stack):
    image, target = stack
    with pytest.raises(ValueError, match="outside the stack"):
        propagate(image, Z, target[START])
    with pytest.raises(ValueError, match="non-empty"):
        propagate(image, START, np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="size"):
        propagate(image, START, np.ones((H // 2, W), bool))
