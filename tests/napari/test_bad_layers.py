"""Bad data and odd prompts through the unisam widget in a real napari viewer (Xvfb), issue #19: every
case gives a clear napari notification and no exception reaches the caller (the layer events, Qt);
odd but valid layers (RGBA, 16-bit, 1 x 1) segment exactly as the core segments the same array."""

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

import unisam
from unisam_napari._widget import UnisamWidget

_NAN = np.where(np.arange(64 * 64).reshape(64, 64) == 7, np.nan, 0.5).astype(np.float32)
_INF = np.where(np.arange(64 * 64).reshape(64, 64) == 7, np.inf, 0.5).astype(np.float32)
_NOT_FINITE = "image contains NaN or infinite values"


def messages_since(start: int, severity=NotificationSeverity.ERROR) -> list[str]:
    return [r.message for r in notification_manager.records[start:] if r.severity == severity]


def wait_for(widget: UnisamWidget, qtbot) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)


def good_image() -> np.ndarray:
    image = np.full((48, 64), 20, np.uint8)
    image[10:30, 12:36] = 220
    return image


@pytest.mark.parametrize(
    "data, message",
    [
        (_NAN, _NOT_FINITE),
        (_INF, _NOT_FINITE),
        (np.stack([_NAN] * 3), _NOT_FINITE),  # a stack: the slice shown is read when asked
        (np.zeros((2, 2, 3, 32, 32), np.uint8), "has 5 spatial axes"),
        (np.zeros((2, 3, 32, 32), np.uint8), "has 4 spatial axes"),
    ],
    ids=["nan", "inf", "nan-stack", "5d", "4d"],
)
def test_bad_image_layers_give_one_clear_notification_per_action(make_napari_viewer, qtbot, data, message):
    viewer = make_napari_viewer()
    viewer.add_image(data, name="bad")  # the widget sees the layer appear: no exception
    widget = UnisamWidget(viewer)
    start = len(notification_manager.records)
    if "point_prompts" in viewer.layers:  # the layers were made: a click is decoded at once
        points = viewer.layers["point_prompts"]
        viewer.dims.set_point(0, 0)  # on a stack: the click's slice is the one shown
        points.add([[0] * (points.ndim - 2) + [5, 5]])
        assert not viewer.layers["current_object"].data.any()
    else:
        assert widget.segment() is None
    assert len(messages_since(start)) == 1, messages_since(start)
    for action in (widget.embed, widget.segment_all):  # background jobs report their error too
        mark = len(notification_manager.records)
        action()
        wait_for(widget, qtbot)
        qtbot.waitUntil(lambda: bool(messages_since(mark)), timeout=10_000)  # the worker's error signal comes last
    errors = messages_since(start)
    assert len(errors) == 3 and all(message in m and m.startswith("unisam: ") for m in errors), errors
    assert "unisam_segmentation" not in viewer.layers
    viewer.layers.remove("bad")  # and the widget goes on with a good image
    viewer.add_image(good_image(), name="good")
    viewer.layers["point_prompts"].add([[20, 24]])
    assert viewer.layers["current_object"].data[20, 24] and messages_since(start) == errors


@pytest.mark.parametrize(
    "data, rgb",
    [
        (np.dstack([np.repeat(good_image()[..., None], 3, axis=2), np.full((48, 64), 90, np.uint8)]), True),
        ((good_image().astype(np.uint16) * 250 + 300).astype(np.uint16), False),
        (np.full((1, 1), 200, np.uint8), False),
        (np.tile(good_image()[20:21], (1, 1)), False),  # one row
    ],
    ids=["rgba", "16-bit", "1x1", "1x64"],
)
def test_odd_but_valid_layers_segment_as_the_core_does(make_napari_viewer, data, rgb):
    viewer = make_napari_viewer()
    viewer.add_image(data, rgb=rgb, name="odd")
    widget = UnisamWidget(viewer)
    start = len(notification_manager.records)
    row, col = min(20, data.shape[0] - 1), min(24, data.shape[1] - 1)
    viewer.layers["point_prompts"].add([[row, col]])
    expected = unisam.segment(data, points=[[col + 0.5, row + 0.5]], model=widget._predictor()).masks[0]
    np.testing.assert_array_equal(viewer.layers["current_object"].data > 0, expected)
    assert expected.any() and messages_since(start) == []


def test_empty_and_outside_prompts_are_explained(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(good_image(), name="good")
    widget = UnisamWidget(viewer)
    points, boxes = viewer.layers["point_prompts"], viewer.layers["box_prompts"]
    start = len(notification_manager.records)
    assert widget.segment() is None and not viewer.layers["current_object"].data.any()  # no prompt: nothing
    assert messages_since(start) == []
    assert widget.commit() is None
    assert messages_since(start, NotificationSeverity.WARNING) == ["unisam: nothing to commit: segment an object first"]
    for action, words in ((widget.propagate, "propagation needs a 3D stack"), (widget.track, "tracking needs a stack"),
                          (widget.name_objects, "no unnamed committed objects on this slice")):
        mark = len(notification_manager.records)
        assert action() is None
        assert any(words in m for m in messages_since(mark)), (words, messages_since(mark))
    mark = len(notification_manager.records)
    boxes.add_rectangles(np.array([[[60, 80], [90, 120]]]))  # wholly below and right of the 48 x 64 image
    assert any("lies outside the image" in m for m in messages_since(mark)), messages_since(mark)
    boxes.data = []
    mark = len(notification_manager.records)
    points.add([[10, 70]])  # right of the image
    assert any("point at row 10.0, column 70.0 is outside the image (48 x 64 pixels)" in m for m in messages_since(mark))
    assert not viewer.layers["current_object"].data.any()
    # a stack: nothing committed yet, so nothing to propagate or track
    viewer.layers.clear()
    viewer.add_image(np.stack([good_image()] * 3), name="stack")
    for action, words in ((widget.propagate, "segment (or commit) an object on this slice first"),
                          (widget.track, "segment and commit objects on a frame first")):
        mark = len(notification_manager.records)
        assert action() is None and widget.worker is None
        assert any(words in m for m in messages_since(mark)), (words, messages_since(mark))
    mark = len(notification_manager.records)
    viewer.layers["point_prompts"].add([[1, 20, -3]])  # left of the image on slice 1
    assert any("outside the image" in m for m in messages_since(mark))


def test_an_embedding_folder_that_cannot_be_written_is_reported(make_napari_viewer, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    viewer = make_napari_viewer()
    viewer.add_image(good_image(), name="good")
    widget = UnisamWidget(viewer, embedding_dir=blocker / "embeddings")
    start = len(notification_manager.records)
    viewer.layers["point_prompts"].add([[20, 24]])  # the click embeds the image, which is saved there
    errors = messages_since(start)
    assert len(errors) == 1 and errors[0].startswith("unisam: [Errno 20] Not a directory: ") and "a-file" in errors[0], errors
    assert not viewer.layers["current_object"].data.any()
