"""unisam.data.synthetic.generate_tracking_scene: deterministic frames whose truth Tracks show each
event they promise (touching, crossing, leaving, entering, dividing) and whose noise / blur frames
differ from the rest."""

import numpy as np
import pytest
from scipy import ndimage

from unisam.data.synthetic import EVENTS, MIN_AREA, generate_tracking_scene
from unisam.tracks import Tracks

T = 18


def scene(*events, seed=0, objects=0, **options):
    return generate_tracking_scene(np.random.default_rng(seed), T, events=events, objects=objects, **options)


def mask_of(truth: Tracks, t: int, i: int) -> np.ndarray:
    frame = truth[t]
    return frame.masks[list(frame.ids).index(i)]


def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((ndimage.binary_dilation(a) & b).any())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_full_scene_is_deterministic_valid_and_bright_inside(seed):
    frames, truth = scene(*EVENTS, seed=seed, objects=4, noise_frames=(3,), blur_frames=(7,))
    again, truth2 = scene(*EVENTS, seed=seed, objects=4, noise_frames=(3,), blur_frames=(7,))
    assert frames.shape == (T, 128, 128) and frames.dtype == np.uint8
    assert np.array_equal(frames, again) and np.array_equal(truth.to_label_stack(), truth2.to_label_stack())
    assert isinstance(truth, Tracks) and len(truth) == T and len(truth.lineage) == 1
    assert len(truth.ids()) >= 4 + 2 + 2 + 1 + 1 + 3 - 1  # at most one object may stay hidden
    for t, found in enumerate(truth):
        assert found.masks.sum(axis=0).max() <= 1  # disjoint
        assert found.masks.sum(axis=(1, 2)).min() >= MIN_AREA
        inside = found.masks.any(axis=0)
        assert frames[t][inside].mean() > frames[t][~inside].mean() + 40


def test_rgb_frames_are_the_same_scene_in_colour():
    grey, truth = scene("touch", objects=2)
    colour, truth_rgb = scene("touch", objects=2, rgb=True)
    assert colour.shape == (T, 128, 128, 3) and colour.dtype == np.uint8
    assert np.array_equal(truth.to_label_stack(), truth_rgb.to_label_stack())
    assert np.corrcoef(grey.ravel(), colour[..., 1].ravel())[0, 1] > 0.99


def test_touching_nuclei_stay_side_by_side():
    _, truth = scene("touch")
    assert truth.ids().tolist() == [1, 2]
    both = [t for t in range(T) if len(truth[t]) == 2]
    assert len(both) == T
    assert all(adjacent(mask_of(truth, t, 1), mask_of(truth, t, 2)) for t in both)


def test_crossing_nuclei_meet_and_swap_sides():
    _, truth = scene("cross")
    assert truth.ids().tolist() == [1, 2]
    centre = {i: np.array([ndimage.center_of_mass(mask_of(truth, t, i)) for t in (0, T - 1)]) for i in (1, 2)}
    start, end = centre[1][0] - centre[2][0], centre[1][1] - centre[2][1]
    assert np.dot(start, end) < 0  # they passed each other
    met = [t for t in range(T) if len(truth[t]) == 2 and adjacent(mask_of(truth, t, 1), mask_of(truth, t, 2))]
    assert met and min(met) > 0 and max(met) < T - 1


def test_a_leaving_nucleus_ends_at_the_border_and_an_entering_one_starts_there():
    _, leave = scene("leave")
    (first, last), = leave.spans().values()
    assert first == 0 and 0 < last < T - 1
    assert touches_border(mask_of(leave, last, 1)) and not touches_border(mask_of(leave, 0, 1))
    assert all(len(leave[t]) == 0 for t in range(last + 1, T))
    _, enter = scene("enter")
    (first, last), = enter.spans().values()
    assert 0 < first and last == T - 1
    assert touches_border(mask_of(enter, first, 1)) and not touches_border(mask_of(enter, T - 1, 1))


@pytest.mark.parametrize("seed", [0, 3])
def test_a_division_gives_two_children_of_one_parent(seed):
    _, truth = scene("divide", seed=seed)
    assert truth.lineage == {1: [2, 3]}
    spans = truth.spans()
    born = spans[2][0]
    assert spans[1] == (0, born - 1) and spans[3][0] == born and T // 3 <= born < 2 * T // 3
    parent = mask_of(truth, born - 1, 1)
    for child in (2, 3):
        mask = mask_of(truth, born, child)
        assert (mask & parent).sum() > 0.6 * mask.sum()  # each daughter lies in its mother
        assert mask.sum() < 0.8 * parent.sum()
    far = [np.array(ndimage.center_of_mass(mask_of(truth, t, 2))) - ndimage.center_of_mass(mask_of(truth, t, 3))
           for t in (born, T - 1)]
    assert np.linalg.norm(far[1]) > np.linalg.norm(far[0]) + 5  # and they move apart


def test_noise_and_blur_frames_differ_from_the_others():
    frames, _ = scene("touch", objects=3, noise_frames=(4,), blur_frames=(9,))
    residual = [float((f.astype(np.float32) - ndimage.median_filter(f, 3)).std()) for f in frames]
    edges = [float(np.percentile(ndimage.gaussian_gradient_magnitude(f.astype(np.float32), 1.0), 99)) for f in frames]
    ordinary = [t for t in range(T) if t not in (4, 9)]
    assert residual[4] > 2 * max(residual[t] for t in ordinary)
    assert edges[9] < 0.6 * min(edges[t] for t in ordinary)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown events"):
        scene("explode")
    with pytest.raises(ValueError, match="noise_frames"):
        scene(noise_frames=(T,))
    with pytest.raises(ValueError, match=">= 32"):
        generate_tracking_scene(np.random.default_rng(0), T, (16, 64))
