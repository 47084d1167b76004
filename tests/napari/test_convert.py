"""The widget's pure helpers (no Qt): napari layer data -> images unisam accepts, napari coordinates ->
prompts, and the user-facing errors for data it cannot segment."""

import numpy as np
import pytest

from unisam.images import load_image
from unisam.prompts import collect_prompts
from unisam import Instances, Tracks
from unisam_napari._convert import (
    image_source,
    keyframe_objects,
    on_slice,
    paint_tracks,
    pixels_to_xy,
    prompt_on_slice,
    tracks_layer_data,
)
from unisam_napari._sample_data import make_sample_data, make_sample_stack

RNG = np.random.default_rng(0)


def test_pixel_centres_map_to_unisam_coordinates():
    # napari pixel (row 3, col 5) spans rows 2.5..3.5 and cols 4.5..5.5; unisam's pixel x=5, y=3 spans 5..6, 3..4
    np.testing.assert_array_equal(pixels_to_xy([[3, 5]]), [[5.5, 3.5]])
    np.testing.assert_array_equal(pixels_to_xy([[-0.5, -0.5], [9.5, 19.5]]), [[0, 0], [20, 10]])


@pytest.mark.parametrize(
    "data, rgb, stack, shape",
    [
        (RNG.integers(0, 4000, (40, 50), dtype=np.uint16), False, False, (40, 50)),
        (RNG.random((40, 50)).astype(np.float32) * 7 - 3, False, False, (40, 50)),
        (RNG.integers(0, 255, (40, 50, 3), dtype=np.uint8), True, False, (40, 50)),
        (RNG.integers(0, 255, (40, 50, 4), dtype=np.uint8), True, False, (40, 50)),
        (RNG.integers(0, 4000, (6, 40, 50), dtype=np.uint16), False, True, (40, 50)),
        (RNG.integers(0, 255, (6, 40, 50, 3), dtype=np.uint8), True, True, (40, 50)),
    ],
)
def test_single_layers_become_images_load_image_accepts(data, rgb, stack, shape):
    source = image_source([data], [rgb])
    assert source.is_stack == stack and source.shape == shape
    assert source.labels_shape == ((data.shape[0], *shape) if stack else shape)
    image = source.image(2 if stack else None)
    np.testing.assert_array_equal(image, data[2] if stack else data)  # passed on unchanged
    assert load_image(image).shape == (*shape, 3)
    frames = source.frames()
    assert len(frames) == source.n_slices
    np.testing.assert_array_equal(frames[-1], image if not stack else data[-1])


def test_channel_layers_are_stretched_each_on_its_own():
    dim = RNG.integers(100, 200, (5, 30, 40)).astype(np.uint16)
    bright = RNG.random((5, 30, 40)).astype(np.float32) * 1e4
    source = image_source([dim, bright], [False, False])
    composite = source.image(3)
    assert composite.dtype == np.uint8 and composite.shape == (30, 40, 3)
    np.testing.assert_array_equal(composite[..., 0], load_image(dim[3])[..., 0])
    np.testing.assert_array_equal(composite[..., 1], load_image(bright[3])[..., 0])
    assert not composite[..., 2].any()
    assert composite[..., 0].max() == 255 and composite[..., 1].max() == 255  # both use the full range


@pytest.mark.parametrize(
    "datas, rgb, message",
    [
        ([], [], "no image layer"),
        ([np.zeros((64, 64, 3))], [False], "looks like a colour image"),
        ([np.zeros((2, 3, 64, 64))], [False], "4 spatial axes"),
        ([np.zeros((2, 3, 64, 64, 3), np.uint8)], [True], "4 spatial axes"),
        ([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64))], [True, False], "RGB layer cannot be combined"),
        ([np.zeros((64, 64)), np.zeros((64, 65))], [False, False], "one shape"),
        ([np.zeros((64, 64))] * 4, [False] * 4, "at most 3"),
        ([np.array([["a", "b"], ["c", "d"]])], [False], "data type"),
    ],
)
def test_data_that_cannot_be_segmented_is_explained(datas, rgb, message):
    with pytest.raises(ValueError, match=message):
        image_source(datas, rgb)


def test_prompts_on_the_current_slice():
    points = np.array([[0, 5, 6], [1, 7, 8], [1.2, 9, 10], [2, 1, 1]])
    positive = np.array([True, True, False, True])
    boxes = [
        np.array([[1, 2, 3], [1, 2, 30], [1, 20, 30], [1, 20, 3]]),
        np.array([[2, 0, 0], [2, 0, 9], [2, 9, 9], [2, 9, 0]]),
    ]
    np.testing.assert_array_equal(on_slice(points, 1), [False, True, True, False])
    prompt = prompt_on_slice(points, positive, boxes, 1, (40, 50))
    np.testing.assert_array_equal(prompt.points, [[8.5, 7.5], [10.5, 9.5]])
    np.testing.assert_array_equal(prompt.point_labels, [1, 0])
    np.testing.assert_array_equal(prompt.box, [3.5, 2.5, 30.5, 20.5])
    only_box = prompt_on_slice(points[:0], positive[:0], boxes, 2, (40, 50))
    assert only_box.points is None and only_box.box.tolist() == [0.5, 0.5, 9.5, 9.5]
    assert prompt_on_slice(points, positive, boxes, 5, (40, 50)) is None
    two_d = prompt_on_slice(points[:, 1:], positive, [b[:, 1:] for b in boxes], None, (40, 50))
    assert len(two_d.points) == 4 and two_d.box.tolist() == [0.5, 0.5, 9.5, 9.5]  # the last box wins
    flat = np.array([[4, 4], [4, 4], [4, 4], [4, 4]])  # a rectangle just started by a click: no box yet
    assert prompt_on_slice(points[:, 1:], positive, [boxes[0][:, 1:], flat], None, (40, 50)).box.tolist() == [
        3.5,
        2.5,
        30.5,
        20.5,
    ]


def test_a_box_dragged_past_the_border_is_cut_to_the_image():
    past = [np.array([[-6, -4], [-6, 60], [30, 60], [30, -4]])]  # rows, cols beyond a 40 x 50 image
    assert prompt_on_slice(np.zeros((0, 2)), np.zeros(0, bool), past, None, (40, 50)).box.tolist() == [0, 0, 50, 30.5]
    away = [np.array([[50, 60], [50, 70], [60, 70], [60, 60]])]  # wholly outside: the core's error
    with pytest.raises(ValueError, match="lies outside the image"):
        collect_prompts(prompt_on_slice(np.zeros((0, 2)), np.zeros(0, bool), away, None, (40, 50)), image_size=(40, 50))


def test_points_outside_the_image_are_refused():
    with pytest.raises(ValueError, match=r"row 3.0, column 50.0 is outside the image \(40 x 50"):
        prompt_on_slice(np.array([[3, 50.0]]), np.array([True]), [], None, (40, 50))
    assert prompt_on_slice(np.array([[-0.5, 49.5]]), np.array([True]), [], None, (40, 50)) is not None  # the edge


def test_sample_data_needs_no_download_and_has_nuclei():
    [(image, meta, kind)] = make_sample_data()
    assert kind == "image" and image.dtype == np.uint16 and image.shape == (256, 256)
    assert image.max() > 4 * np.median(image)  # bright nuclei over a dark background
    [(stack, meta, kind)] = make_sample_stack()
    assert kind == "image" and stack.dtype == np.uint16 and stack.shape == (12, 192, 192)
    assert meta["name"] != make_sample_data()[0][1]["name"]


def square(size, top, left, side=3) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_keyframe_objects_are_the_named_ids_still_drawn():
    labels = np.zeros((4, 10, 10), np.int32)
    labels[0][square((10, 10), 1, 1)] = 3
    labels[0][square((10, 10), 5, 5)] = 7
    labels[2][square((10, 10), 2, 2)] = 7
    start = keyframe_objects(labels, {0: {3, 7, 9}, 2: [7], 3: {3}})  # 9 and frame 3's 3 were erased
    assert sorted(start) == [0, 2]
    assert start[0].ids.tolist() == [3, 7] and start[2].ids.tolist() == [7]
    np.testing.assert_array_equal(start[0].masks, [labels[0] == 3, labels[0] == 7])
    assert start[0].image_size == (10, 10)
    assert keyframe_objects(labels, {1: {3}}) == {}


def test_paint_tracks_redraws_tracked_ids_only_and_never_over_other_objects():
    size = (10, 10)
    labels = np.zeros((2, *size), np.int32)
    labels[0][square(size, 0, 0)] = 1  # tracked: moves
    labels[1][square(size, 0, 0)] = 1  # its old position on frame 1, to be replaced
    labels[1][square(size, 6, 6)] = 5  # the user's own object: kept, even where a track goes
    moved = square(size, 5, 5)  # overlaps object 5
    tracks = [Instances.from_masks(square(size, 0, 0)[None], ids=np.array([1])),
              Instances.from_masks(np.stack([moved, square(size, 0, 6)]), ids=np.array([1, 8]))]
    paint_tracks(labels, tracks, [1])
    assert (labels[0] == 1).sum() == 9
    assert not labels[1][:3, :3].any()  # the old pixels are gone
    np.testing.assert_array_equal(labels[1] == 1, moved & ~square(size, 6, 6))
    assert (labels[1] == 5).sum() == 9 and not (labels[1] == 8).any()  # 8 was not asked for


def test_tracks_layer_data_has_centroids_and_the_inverted_lineage():
    size = (10, 10)
    frames = [Instances.from_masks(square(size, 0, 0)[None], ids=np.array([1])),
              Instances.from_masks(np.stack([square(size, 0, 6), square(size, 6, 0)]), ids=np.array([2, 3]))]
    data, graph = tracks_layer_data(Tracks(frames, lineage={1: [2, 3]}))
    np.testing.assert_allclose(data, [[1, 0, 1, 1], [2, 1, 1, 7], [3, 1, 7, 1]])  # (id, t, row, col)
    assert graph == {2: [1], 3: [1]}
