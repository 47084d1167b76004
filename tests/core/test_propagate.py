"""unisam.propagate with the bundled model on a drawn z-stack whose ground truth is exact."""

import numpy as np
import pytest
from scipy import ndimage

import unisam
from unisam import load_image, propagate
from unisam.prompts import mask_to_prompt

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


def present(frames: list[unisam.Instances]) -> list[int]:
    """The frames that hold the object."""
    return [z for z, found in enumerate(frames) if len(found)]


def stacked(frames: list[unisam.Instances]) -> np.ndarray:
    """(Z, H, W) bool: the object's mask per frame (empty where it is absent)."""
    return np.stack([found.masks.any(axis=0) for found in frames])


@pytest.fixture(scope="module")
def stack():
    return nuclei_stack()


def test_mask_to_prompt_box_and_deep_points():
    yy, xx = np.mgrid[:40, :60]
    disk = (yy - 20) ** 2 + (xx - 30) ** 2 <= 8**2
    one = mask_to_prompt(disk)
    assert one.box.tolist() == [22, 12, 39, 29]  # pixel edges: columns 22..38, rows 12..28
    assert one.points.tolist() == [[30.5, 20.5]]  # the centre pixel is the innermost
    assert one.point_labels.tolist() == [1] and one.mask is None
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
    result = propagate(image, START, target[START], model=model, object_id=7)
    assert present(result) == list(TARGET_SLICES)
    masks = stacked(result)
    for z in TARGET_SLICES:
        assert iou(masks[z], target[z]) > 0.5, z
        assert result[z].ids.tolist() == [7] and result[z].image_size == (H, W)
    outside = [z for z in range(Z) if z not in TARGET_SLICES]
    assert not masks[outside].any()
    reached = [z for z in TARGET_SLICES if z != START]
    assert all(result[z].scores[0] >= 0.75 for z in reached) and result[START].scores[0] == 1.0
    np.testing.assert_array_equal(masks[START], target[START])
    # each visited slice (the object's, plus the one per side where it was lost) was embedded once
    assert model.encoder_runs == len(reached) + 2
    again = propagate(image, START, target[START], model=model)
    assert model.encoder_runs == len(reached) + 2
    np.testing.assert_array_equal(stacked(again), masks)


def test_steps_go_up_then_down_and_a_sequence_of_images_works(stack):
    image, target = stack
    steps = list(propagate(image, START, target[START], model="unisam-tiny", stream=True))
    assert [z for z, _ in steps] == [START, *range(START + 1, 13), *range(START - 1, 1, -1)]
    assert all(len(found) == 1 and found.image_size == (H, W) for _, found in steps)
    frames = [load_image(s) for s in image]  # a list of RGB uint8 frames: the same pixels the model saw
    result = propagate(frames, START, target[START])
    for z, found in steps:
        np.testing.assert_array_equal(result[z].masks, found.masks)


def test_thresholds_control_where_propagation_stops(stack):
    image, target = stack
    strict = propagate(image, START, target[START], model="unisam-tiny", min_overlap=0.99)
    assert present(strict) == [START]  # no slice matches the start mask that well
    lax = propagate(image, START, target[START], model="unisam-tiny", score_threshold=0.0, min_overlap=0.0)
    assert present(lax) == list(range(Z))  # nothing stops it: it runs to both ends


def test_bad_input_is_rejected(stack):
    image, target = stack
    with pytest.raises(ValueError, match="outside the stack"):
        propagate(image, Z, target[START])
    with pytest.raises(ValueError, match="non-empty"):
        propagate(image, START, np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="size"):
        propagate(image, START, np.ones((H // 2, W), bool))
    with pytest.raises(ValueError, match="no slices"):
        propagate([], 0, target[START])
    with pytest.raises(ValueError, match="unknown propagation options"):
        propagate(image, START, target[START], min_overlpa=0.5)
