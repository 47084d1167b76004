"""The unisam napari widget in a real viewer (napari's make_napari_viewer under Xvfb): its Labels layers
must hold exactly what the unisam core returns for the same prompts, and cover the synthetic objects."""

import subprocess
import sys

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from scipy import ndimage

import unisam
from unisam import load_image
from unisam.data.synthetic import generate_sample, generate_sequence
from unisam_napari._sample_data import IMAGE_SEED, STACK_SEED
from unisam_napari._widget import UnisamWidget

PLUGIN, WIDGET = "unisam", "Segment with unisam"


@pytest.fixture(scope="module")
def nuclei():
    """The 2D sample image and its ground truth."""
    return generate_sample(np.random.default_rng(IMAGE_SEED), (256, 256), "nuclei")


def centre(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel deepest inside ``mask``."""
    depth = ndimage.distance_transform_edt(mask)
    return tuple(int(i) for i in np.unravel_index(np.argmax(depth), depth.shape))


def isolated(sample) -> list[int]:
    """Indices of the sample's objects that touch no other object, largest first (a click on such a
    nucleus is unambiguous)."""
    everything = sample.masks.any(axis=0)
    order = np.argsort(-sample.masks.sum(axis=(1, 2)), kind="stable")
    return [
        int(k)
        for k in order
        if not (ndimage.binary_dilation(sample.masks[k], iterations=3) & everything & ~sample.masks[k]).any()
    ]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def records_since(start: int, severity=NotificationSeverity.ERROR) -> list[str]:
    return [r.message for r in notification_manager.records[start:] if r.severity == severity]


def wait_for(widget: UnisamWidget, qtbot) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)


def docked(viewer) -> UnisamWidget:
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, UnisamWidget)
    return widget


def test_manifest_validates_and_sample_and_widget_load(make_napari_viewer):
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", PLUGIN], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei")
    image = viewer.layers["unisam nuclei"]
    assert image.data.dtype == np.uint16 and image.data.shape == (256, 256)
    widget = docked(viewer)
    # docking onto an image creates the prompt and object layers, aligned with the image
    for name, kind in [
        ("point_prompts", "Points"),
        ("box_prompts", "Shapes"),
        ("current_object", "Labels"),
        ("committed_objects", "Labels"),
    ]:
        assert type(viewer.layers[name]).__name__ == kind
    assert viewer.layers["committed_objects"].data.shape == (256, 256)
    assert widget.model.value == unisam.default_model()
    viewer.open_sample(PLUGIN, "nuclei-stack")
    assert viewer.layers["unisam nuclei time-lapse"].data.shape == (12, 192, 192)


def test_prompts_give_the_core_mask_then_commit_and_clear(make_napari_viewer, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="nuclei", scale=(0.5, 0.5), translate=(10, 20))
    widget = UnisamWidget(viewer)
    points, boxes = viewer.layers["point_prompts"], viewer.layers["box_prompts"]
    current, committed = viewer.layers["current_object"], viewer.layers["committed_objects"]
    assert tuple(current.scale) == (0.5, 0.5) and tuple(points.translate) == (10, 20)
    biggest = isolated(nuclei)[:2]
    model = widget._predictor()

    r, c = centre(nuclei.masks[biggest[0]])
    points.add([[r, c]])  # a positive click: current_object updates at once
    expected = unisam.segment(nuclei.image, points=[[c + 0.5, r + 0.5]], point_labels=[1], model=model).masks[0]
    np.testing.assert_array_equal(current.data > 0, expected)
    assert iou(current.data > 0, nuclei.masks[biggest[0]]) > 0.5

    rows, cols = np.nonzero(nuclei.masks[biggest[0]])
    corners = [[rows.min() - 1, cols.min() - 1], [rows.max() + 1, cols.max() + 1]]
    boxes.add_rectangles(np.array([corners]))
    box = [cols.min() - 0.5, rows.min() - 0.5, cols.max() + 1.5, rows.max() + 1.5]
    expected = unisam.segment(nuclei.image, points=[[c + 0.5, r + 0.5]], point_labels=[1], box=box, model=model).masks[0]
    np.testing.assert_array_equal(current.data > 0, expected)
    assert iou(current.data > 0, nuclei.masks[biggest[0]]) > 0.5

    assert widget.commit() == 1
    np.testing.assert_array_equal(committed.data == 1, expected)
    assert len(points.data) == 0 and len(boxes.data) == 0 and not current.data.any()

    r2, c2 = centre(nuclei.masks[biggest[1]])
    points.add([[r2, c2]])
    assert widget.commit() == 2
    assert iou(committed.data == 2, nuclei.masks[biggest[1]]) > 0.5
    assert (committed.data == 1).sum() > 0  # the first object stays

    points.add([[r, c]])
    assert current.data.any()
    widget.clear_prompts()
    assert len(points.data) == 0 and not current.data.any()


def test_polarity_shortcut_makes_negative_points(make_napari_viewer, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="nuclei")
    widget = UnisamWidget(viewer)
    points, current = viewer.layers["point_prompts"], viewer.layers["current_object"]
    big = nuclei.masks[isolated(nuclei)[0]]
    r, c = centre(big)
    points.add([[r, c]])
    _press(viewer, "Shift-T")
    assert widget.polarity.value == "new points: negative"
    far = np.argwhere(~ndimage.binary_dilation(big, iterations=5))[0]
    points.add([far])
    assert points.features["positive"].tolist() == [True, False]
    np.testing.assert_allclose(points.face_color[1], [1, 0, 0, 1])  # red = negative
    expected = unisam.segment(
        nuclei.image,
        points=[[c + 0.5, r + 0.5], [far[1] + 0.5, far[0] + 0.5]],
        point_labels=[1, 0],
        model=widget._predictor(),
    ).masks[0]
    np.testing.assert_array_equal(current.data > 0, expected)
    _press(viewer, "Shift-C")
    assert (viewer.layers["committed_objects"].data == 1).sum() == expected.sum()


def test_propagation_fills_the_stack(make_napari_viewer, qtbot):
    frames = generate_sequence(np.random.default_rng(STACK_SEED), 12, (192, 192), "nuclei")
    stack = np.stack([f.image for f in frames])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack", scale=(3.0, 0.5, 0.5))  # anisotropic: z steps of 3
    widget = UnisamWidget(viewer)
    mid = 6
    viewer.dims.set_point(0, mid * 3.0)
    target_id = frames[mid].ids[np.argmax(frames[mid].masks.sum(axis=(1, 2)))]
    truth = [
        f.masks[list(f.ids).index(target_id)] if target_id in f.ids else np.zeros((192, 192), bool) for f in frames
    ]
    r, c = centre(truth[mid])
    viewer.layers["point_prompts"].add([[mid, r, c]])
    current = viewer.layers["current_object"].data
    assert current[mid].any() and not np.delete(current, mid, axis=0).any()

    widget.propagate()
    wait_for(widget, qtbot)
    committed = viewer.layers["committed_objects"].data == 1
    expected = unisam.propagate(stack, mid, committed[mid], model=widget._predictor())
    np.testing.assert_array_equal(committed, [frame.to_label_image() == 1 for frame in expected])
    good = [z for z in range(12) if iou(committed[z], truth[z]) > 0.5]
    assert len(good) >= 6 and mid in good, [round(iou(committed[z], truth[z]), 2) for z in range(12)]


def test_segment_all_fills_a_labels_layer_plain_and_tiled(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="nuclei")
    widget = UnisamWidget(viewer)
    widget.segment_all()
    wait_for(widget, qtbot)
    params = {"points_per_side": 16}  # the widget's default; the rest: the model's
    expected = unisam.segment_everything(nuclei.image, model=widget._predictor(), **params)
    labels = viewer.layers["unisam_segmentation"].data
    np.testing.assert_array_equal(labels, expected.to_label_image())
    assert len(np.unique(labels)) > 10

    big = generate_sample(np.random.default_rng(1), (384, 384), "nuclei")
    viewer.layers.clear()
    viewer.add_image(big.image, name="big")
    widget.tiled.value = True
    widget.everything["points_per_side"].value = 8
    widget.segment_all()
    wait_for(widget, qtbot)
    params["points_per_side"] = 8
    tiled = unisam.segment_everything(big.image, model=widget._predictor(), tiles=True, **params)
    np.testing.assert_array_equal(viewer.layers["unisam_segmentation"].data, tiled.to_label_image())
    r, c = centre(big.masks[isolated(big)[0]])
    viewer.layers["point_prompts"].add([[r, c]])  # in tiled mode a click is decoded in its tile
    expected = unisam.segment(big.image, points=[[c + 0.5, r + 0.5]], model=widget._predictor(), tiles=True).masks[0]
    np.testing.assert_array_equal(viewer.layers["current_object"].data > 0, expected)
    assert iou(expected, big.masks[isolated(big)[0]]) > 0.5


def test_segment_all_in_watershed_mode_from_the_form(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="nuclei")
    widget = UnisamWidget(viewer)
    widget.everything["object_size"].value = 20  # a size in pixels: the form allows more than 1
    widget.everything["watershed_seed_thresh"].value = 0.3
    assert widget.everything["object_size"].value == 20
    widget.segment_all()
    wait_for(widget, qtbot)
    params = {"points_per_side": 16, "object_size": 20, "watershed_seed_thresh": 0.3}
    expected = unisam.segment_everything(nuclei.image, model=widget._predictor(), **params)
    np.testing.assert_array_equal(viewer.layers["unisam_segmentation"].data, expected.to_label_image())
    assert len(expected) > 5


def test_embeddings_are_cached_on_disk(make_napari_viewer, qtbot, nuclei, embedding_cache, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="nuclei")
    first = UnisamWidget(viewer)
    first.embed()
    wait_for(first, qtbot)
    before = first._predictor()
    assert before.encoder_runs == 1
    assert len(list(embedding_cache.glob("*/*.npz"))) == 1
    monkeypatch.setattr(unisam.hub, "_shared", {})  # no shared predictors, as after restarting napari
    second = UnisamWidget(viewer)
    second.embed()
    wait_for(second, qtbot)
    assert second._predictor() is not before
    assert second._predictor().encoder_runs == 0
    viewer.layers["point_prompts"].add([list(centre(nuclei.masks[0]))])
    assert viewer.layers["current_object"].data.any() and second._predictor().encoder_runs == 0


def test_multichannel_layers_are_composed(make_napari_viewer):
    cells = generate_sample(np.random.default_rng(3), (128, 160), "cells")
    nuclei_channel = ndimage.gaussian_filter(cells.masks.any(axis=0).astype(np.float32), 2) * 1000
    grey = load_image(cells.image)[..., 1].astype(np.uint16) * 40
    viewer = make_napari_viewer()
    a = viewer.add_image(grey, name="cytoplasm")
    b = viewer.add_image(nuclei_channel, name="nuclei")
    widget = UnisamWidget(viewer)
    widget.images.value = [a, b]
    r, c = centre(cells.masks[0])
    viewer.layers["point_prompts"].add([[r, c]])
    composite = np.zeros((128, 160, 3), np.uint8)
    composite[..., 0] = load_image(grey)[..., 0]
    composite[..., 1] = load_image(nuclei_channel)[..., 0]
    expected = unisam.segment(composite, points=[[c + 0.5, r + 0.5]], model=widget._predictor()).masks[0]
    np.testing.assert_array_equal(viewer.layers["current_object"].data > 0, expected)


def test_bad_input_gives_notifications_and_the_viewer_keeps_working(make_napari_viewer, nuclei):
    viewer = make_napari_viewer()
    widget = UnisamWidget(viewer)
    start = len(notification_manager.records)
    assert widget.segment() is None
    assert any("no image layer" in m for m in records_since(start))

    odd = viewer.add_image(np.random.default_rng(0).random((64, 64, 3)), rgb=False, name="odd")
    start = len(notification_manager.records)
    widget.embed()
    assert any("looks like a colour image" in m and "rgb=True" in m for m in records_since(start))
    viewer.layers.remove(odd)

    viewer.add_image(nuclei.image, name="nuclei")
    widget.model.value = "sam-vit-b"  # official weights, not downloaded here
    start = len(notification_manager.records)
    widget.embed()
    assert any("sam-vit-b" in m for m in records_since(start)) and widget.worker is None
    widget.model.value = "unisam-tiny"
    points = viewer.layers["point_prompts"]
    start = len(notification_manager.records)
    points.add([[-40, 30]])  # above the image
    assert any("outside the image" in m for m in records_since(start))
    assert not viewer.layers["current_object"].data.any()
    points.data = np.zeros((0, 2))
    r, c = centre(nuclei.masks[0])
    points.add([[r, c]])  # the viewer and widget still work
    assert viewer.layers["current_object"].data.any()


def _press(viewer, key: str) -> None:
    """Press and release ``key`` through the viewer's key handler (active layer first, then viewer), as a
    key press on the canvas does."""
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)
