"""Time-lapse tracking in the unisam widget, in a real viewer under Xvfb: "Track from this frame"
must write exactly what the core's ``unisam.track`` returns for the same keyframes into
``committed_objects`` (ids kept, other objects untouched, keyframes kept), and "Track all" must add
the core's automatic tracks as a Labels layer and a Tracks layer with the divisions as its graph."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels, Tracks
from test_widget import centre, iou, records_since, wait_for
from napari.utils.notifications import notification_manager

import unisam
from unisam import Instances
from unisam.data.synthetic.tracking import generate_tracking_scene
from unisam_napari._widget import UnisamWidget

T, SIZE = 10, (128, 128)


@pytest.fixture(scope="module")
def scene():
    """Three drifting nuclei, well apart, with exact truth (ids 1..3)."""
    return generate_tracking_scene(np.random.default_rng(1), T, SIZE, objects=3, events=(), radius=(9, 11))


def truth_mask(scene, t: int, object_id: int) -> np.ndarray:
    frame = scene.truth[t]
    return frame.masks[frame.ids.tolist().index(object_id)]


def click_and_commit(viewer, widget: UnisamWidget, t: int, point: tuple[int, int]) -> int:
    viewer.layers["point_prompts"].add([[t, *point]])
    assert viewer.layers["current_object"].data[t].any()
    return widget.commit()


def test_tracking_keeps_ids_and_equals_the_core(make_napari_viewer, qtbot, scene):
    viewer = make_napari_viewer()
    viewer.add_image(scene.frames, name="time-lapse", scale=(1.0, 0.5, 0.5))
    widget = UnisamWidget(viewer)
    committed = viewer.layers["committed_objects"]
    committed.data[4, :5, :5] = 50  # the user's own object on one frame: tracking must leave it alone
    viewer.dims.set_point(0, 0)
    ids = [click_and_commit(viewer, widget, 0, centre(truth_mask(scene, 0, k))) for k in (1, 2)]
    assert ids == [51, 52]
    start = {0: Instances.from_masks(committed.data[0][None] == np.array(ids)[:, None, None], ids=np.array(ids))}

    widget.track()
    wait_for(widget, qtbot)
    expected = unisam.track(scene.frames, start, model=widget._predictor())
    labels = committed.data
    assert labels[4, :5, :5].tolist() == (np.full((5, 5), 50)).tolist()
    for t in range(T):
        for object_id, found in zip(expected[t].ids.tolist(), expected[t].masks):
            np.testing.assert_array_equal(labels[t] == object_id, found & ~(labels[t] == 50))
    for object_id, truth_id in zip(ids, (1, 2)):
        good = [t for t in range(T) if iou(labels[t] == object_id, truth_mask(scene, t, truth_id)) > 0.6]
        assert len(good) >= T - 1, [round(iou(labels[t] == object_id, truth_mask(scene, t, truth_id)), 2)
                                    for t in range(T)]


def test_a_later_keyframe_adds_an_object_and_keeps_what_it_shows(make_napari_viewer, qtbot, scene):
    viewer = make_napari_viewer()
    viewer.add_image(scene.frames, name="time-lapse")
    widget = UnisamWidget(viewer)
    committed = viewer.layers["committed_objects"]
    viewer.dims.set_point(0, 0)
    first = click_and_commit(viewer, widget, 0, centre(truth_mask(scene, 0, 1)))
    widget.track()
    wait_for(widget, qtbot)
    drawn_first = committed.data[0] == first
    viewer.dims.set_point(0, 6)
    third = click_and_commit(viewer, widget, 6, centre(truth_mask(scene, 6, 3)))
    committed.data[6][committed.data[6] == first] = 0  # a correction by brush: on frame 6 object 1 is
    committed.data[6][truth_mask(scene, 6, 1)] = first  # exactly its truth
    shown = committed.data[6].copy()

    widget.track()  # from frame 6: object 1 (corrected) and the new object 3
    wait_for(widget, qtbot)
    labels = committed.data
    np.testing.assert_array_equal(labels[6], shown)  # the keyframe keeps what the user drew
    np.testing.assert_array_equal(labels[0] == first, drawn_first)  # so does the first keyframe
    for t in range(T):  # the new object is followed backwards and forwards, under its id
        assert iou(labels[t] == third, truth_mask(scene, t, 3)) > 0.5, t
    keys = {k: sorted(v) for k, v in committed.metadata["unisam_keyframes"].items()}
    assert keys == {0: [first], 6: [first, third]}


def test_track_all_adds_tracks_and_lineage_layers(make_napari_viewer, qtbot):
    dividing = generate_tracking_scene(np.random.default_rng(0), 16, SIZE, objects=1, events=("divide",))
    labels = dividing.truth.to_label_stack()
    own = np.zeros_like(labels)  # per-frame labels with unrelated numbers: not linked yet
    for t, frame in enumerate(labels):
        for k, value in enumerate(np.unique(frame)[1:], 1):
            own[t][frame == value] = 10 * t + k
    viewer = make_napari_viewer()
    viewer.add_image(dividing.frames, name="cells", scale=(2.0, 0.5, 0.5))
    viewer.add_labels(own, name="my segmentation", scale=(2.0, 0.5, 0.5))
    widget = UnisamWidget(viewer)
    assert "my segmentation" in widget.segmentation.choices and "current_object" not in widget.segmentation.choices
    widget.segmentation.value = "my segmentation"
    widget.linker.value = "laptrack"
    bars = []
    widget._start = _recording_bars(widget._start, widget, bars)

    widget.track_all()
    wait_for(widget, qtbot)
    expected = unisam.track(dividing.frames, model=widget._predictor(), instances=own, method="laptrack")
    tracks_labels, lineage = viewer.layers["unisam_tracks"], viewer.layers["unisam_lineage"]
    assert isinstance(tracks_labels, Labels) and isinstance(lineage, Tracks)
    np.testing.assert_array_equal(tracks_labels.data, expected.to_label_stack())
    assert tuple(tracks_labels.scale) == tuple(lineage.scale) == (2.0, 0.5, 0.5)
    [(mother, daughters)] = expected.lineage.items()
    assert len(daughters) == 2 and lineage.graph == {d: [mother] for d in daughters}
    np.testing.assert_allclose(lineage.data, expected.centroids())
    assert bars and bars[-1] == (16, 16)  # the progress bar reached its total: 16 frames pooled

    widget.track_all()  # again: a second pair of layers, the first run's layers are kept
    wait_for(widget, qtbot)
    assert [layer.name for layer in viewer.layers if layer.name.startswith("unisam_tracks")] == [
        "unisam_tracks", "unisam_tracks [1]"]


def test_track_all_segments_everything_itself(make_napari_viewer, qtbot, scene):
    viewer = make_napari_viewer()
    viewer.add_image(scene.frames[:5], name="time-lapse")
    widget = UnisamWidget(viewer)
    assert widget.segmentation.value == "segment everything" and widget.linker.value == "hungarian"
    widget.track_all()
    wait_for(widget, qtbot)
    found = viewer.layers["unisam_tracks"].data
    params = {name: box.value for name, box in widget.everything.items()}  # points_per_side 16
    expected = unisam.track(scene.frames[:5], model=widget._predictor(), **params)
    np.testing.assert_array_equal(found, expected.to_label_stack())
    for object_id in (1, 2, 3):  # each nucleus is one track: one id over all five frames
        ids = {int(np.bincount(found[t][truth_mask(scene, t, object_id)]).argmax()) for t in range(5)}
        assert len(ids) == 1 and 0 not in ids, (object_id, ids)


def test_tracking_bad_input_gives_notifications(make_napari_viewer, qtbot, scene):
    viewer = make_napari_viewer()
    viewer.add_image(scene.frames[0], name="one frame")
    widget = UnisamWidget(viewer)
    start = len(notification_manager.records)
    widget.track()
    widget.track_all()
    viewer.layers.remove("one frame")
    viewer.add_image(scene.frames, name="time-lapse")
    widget.track()  # nothing committed yet
    viewer.add_labels(np.zeros((3, 8, 8), np.int32), name="wrong shape")
    widget.segmentation.value = "wrong shape"
    widget.track_all()
    errors = records_since(start)
    assert sum("this one is 2D" in e for e in errors) == 2, errors
    assert any("commit objects on a frame first" in e for e in errors), errors
    assert any("'wrong shape' has shape (3, 8, 8)" in e for e in errors), errors
    assert widget.worker is None


def _recording_bars(start, widget: UnisamWidget, bars: list):
    """Wrap ``widget._start`` so that every progress update's ``(n, total)`` is recorded."""

    def recording(work, total, description, on_yield=None, on_return=None):
        def advanced(report):
            on_yield(report)
            bars.append((widget.worker.pbar.n, widget.worker.pbar.total))

        return start(work, total, description, on_yield=advanced, on_return=on_return)

    return recording
