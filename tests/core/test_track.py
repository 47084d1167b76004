"""unisam.track with the bundled model on drawn scenes and the synthetic tracking scenes, whose
ground truth is exact: ids, ends of tracks, corrections, both directions, one decoder call per frame,
one encoder run per frame, automatic mode, video files and bad input."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest
from scipy import ndimage

import unisam
from unisam import Instances, Prompt, Tracks, track
from unisam.data.synthetic.tracking import generate_tracking_scene
from unisam.masks import mask_iou, masks_to_boxes
from unisam.runtime.track import disjoint, exclusive

T, H, W = 12, 144, 144
# (radius, centre y, centre x, velocity y, velocity x) of three well separated disks
EASY = [(14, 40, 40, 1.0, 1.5), (16, 95, 100, -1.0, 0.5), (12, 105, 35, 0.5, -0.5)]


def disks(paths: dict[int, tuple[float, list]], size=(H, W), seed=0) -> tuple[np.ndarray, list[dict]]:
    """Frames (T, H, W) uint8 of blurred bright disks on a dark noisy background, and the truth per
    frame {id: (H, W) bool mask}. paths: {id: (radius, [(cy, cx) or None (not drawn)] per frame)}."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(paths.values()))[1])
    yy, xx = np.mgrid[: size[0], : size[1]]
    signal = np.zeros((n, *size), np.float32)
    truth: list[dict] = [{} for _ in range(n)]
    for object_id, (radius, centres) in paths.items():
        for t, centre in enumerate(centres):
            if centre is None:
                continue
            disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
            signal[t] += disk
            if disk.sum() >= 16:
                truth[t][object_id] = disk
    signal = np.stack([ndimage.gaussian_filter(s, 1.0) for s in signal])
    image = 30 + 180 * signal + rng.normal(0, 6, signal.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def moving(objects, n: int = T) -> dict[int, tuple[float, list]]:
    return {k: (r, [(cy + vy * t, cx + vx * t) for t in range(n)]) for k, (r, cy, cx, vy, vx) in enumerate(objects, 1)}


def boxes(truth_frame: dict, ids) -> list[Prompt]:
    return [Prompt(box=masks_to_boxes(truth_frame[i][None])[0]) for i in ids]


def masks_by_id(found: Instances) -> dict[int, np.ndarray]:
    return dict(zip(found.ids.tolist(), found.masks)) if len(found) else {}


def assert_follows(result, truth, object_id: int, frames, least_iou: float = 0.6, truth_id: int | None = None):
    """On each of ``frames`` the result has ``object_id`` on ``truth_id``'s (default the same) object."""
    for t in frames:
        mine = masks_by_id(result[t])
        assert object_id in mine, (object_id, t)
        assert mask_iou(mine[object_id], truth[t][truth_id or object_id]) > least_iou, (object_id, t)


@pytest.fixture(scope="module")
def easy():
    return disks(moving(EASY))


@pytest.fixture()
def model():
    """A fresh predictor: empty caches, its own encoder count."""
    return unisam.load_model("unisam-tiny")


def counting_decoder(model) -> list[int]:
    """Record the batch size of every decoder session run of ``model``."""
    calls: list[int] = []
    run = model._decoder.run

    def counted(outputs, feeds, *args):
        calls.append(int(feeds["point_coords"].shape[0]))
        return run(outputs, feeds, *args)

    model._decoder.run = counted
    return calls


def test_ids_stay_constant_on_an_easy_sequence(easy, model):
    frames, truth = easy
    result = track(frames, boxes(truth[0], [1, 2, 3]), model=model)
    assert isinstance(result, Tracks) and isinstance(result, list) and len(result) == T
    assert all(found.ids.tolist() == [1, 2, 3] and found.image_size == (H, W) for found in result)
    for object_id in (1, 2, 3):
        assert_follows(result, truth, object_id, range(T))
    assert result.spans() == {1: (0, T - 1), 2: (0, T - 1), 3: (0, T - 1)} and result.lineage == {}


def test_ids_stay_constant_on_a_synthetic_tracking_scene(model):
    scene = generate_tracking_scene(np.random.default_rng(0), 16, (128, 128), objects=3, events=(), radius=(10, 13))
    result = track(scene.frames, scene.truth[0], model=model)  # the truth of frame 0 as the start
    assert result.spans() == scene.truth.spans() == {1: (0, 15), 2: (0, 15), 3: (0, 15)}
    truth = [masks_by_id(found) for found in scene.truth]
    for object_id in (1, 2, 3):
        assert_follows(result, truth, object_id, range(16), least_iou=0.5)


def test_an_object_leaving_the_frame_ends_its_track(model):
    # object 1 runs out through the right edge at 4 px / frame; object 2 stays
    frames, truth = disks({1: (12, [(50, 100 + 4 * t) for t in range(16)]), 2: (15, [(100, 50)] * 16)})
    gone = min(t for t in range(16) if 1 not in truth[t])  # 16 px or less left in the frame
    result = track(frames, boxes(truth[0], [1, 2]), model=model)
    present = [t for t, found in enumerate(result) if 1 in found.ids]
    assert present == list(range(present[-1] + 1))  # one stretch from the start ...
    assert present[-1] < gone  # ... that ends when the object has left, and never comes back
    half = [t for t in range(16) if 1 in truth[t] and truth[t][1].sum() >= 0.5 * truth[0][1].sum()]
    assert_follows(result, truth, 1, half)  # followed while at least half of it is in view
    assert_follows(result, truth, 2, range(16))


def test_a_leaving_nucleus_of_a_tracking_scene_ends_its_track(model):
    scene = generate_tracking_scene(np.random.default_rng(0), 16, (128, 128), objects=2, events=("leave",))
    leaving = 1  # the scene's event objects come first
    last = scene.truth.spans()[leaving][1]
    assert last < 15  # the scene really has it leave
    result = track(scene.frames, scene.truth[0], model=model)
    first, end = result.spans()[leaving]
    assert first == 0 and end <= last and all(leaving not in f.ids for f in result[last + 1 :])
    assert {i: s for i, s in result.spans().items() if i != leaving} == {2: (0, 15), 3: (0, 15)}


def test_an_occlusion_shorter_than_the_patience_keeps_the_id(model):
    hidden = [(60, 60 + t) if t not in (5, 6) else None for t in range(T)]  # not drawn on frames 5 and 6
    frames, truth = disks({1: (14, hidden), 2: (14, [(110, 110)] * T)})
    result = track(frames, boxes(truth[0], [1, 2]), model=model)  # patience 2 by default
    assert [t for t, f in enumerate(result) if 1 in f.ids] == [t for t in range(T) if t not in (5, 6)]
    assert_follows(result, truth, 1, [t for t in range(T) if t not in (5, 6)])
    impatient = track(frames, boxes(truth[0], [1, 2]), model=model, patience=0)
    assert [t for t, f in enumerate(impatient) if 1 in f.ids] == list(range(5))  # ended at the first miss
    assert all(2 in f.ids for f in impatient)


def test_pixels_claimed_by_two_objects_go_to_the_better_one(model):
    masks = np.zeros((3, 4, 6), bool)
    masks[0, :, :4] = masks[1, :, 2:] = masks[2, 0] = True  # 0 and 1 share columns 2-3, 2 covers row 0
    out = disjoint(masks, [0.5, 0.9, 0.7])
    assert (out.sum(axis=0) <= 1).all()
    assert out[1, 1:, 2:].all() and not out[0, :, 2:].any()  # the shared columns go to the 0.9 one
    assert out[2, 0, :2].all() and out[1, 0, 2:].all()  # row 0: 0.7 beats 0.5, loses to 0.9
    keyframe = disjoint(masks, [(True, 0.1), (False, 0.9), (False, 0.7)])
    assert keyframe[0].sum() == masks[0].sum()  # an object given on a keyframe wins every pixel
    # two disks that overlap while they pass: every frame's masks are disjoint, both keep their ids
    frames, truth = disks({1: (16, [(60, 40 + 4 * t) for t in range(T)]), 2: (16, [(75, 110 - 4 * t) for t in range(T)])})
    result = track(frames, boxes(truth[0], [1, 2]), model=model)
    for found in result:
        assert (found.masks.sum(axis=0) <= 1).all()
    assert_follows(result, truth, 1, range(4))
    assert_follows(result, truth, 2, range(4))


def test_automatic_segmentation_keeps_one_object_per_pixel():
    whole = np.zeros((20, 20), bool)
    whole[2:12, 2:12] = True
    part, other = np.zeros_like(whole), np.zeros_like(whole)
    part[4:8, 4:8] = True  # inside the better-scoring whole: a part, dropped
    other[10:18, 10:18] = True  # overlaps a corner: kept, without the corner
    found = Instances.from_masks(np.stack([part, whole, other]), np.array([0.85, 0.9, 0.8]))
    kept = exclusive(found)
    assert len(kept) == 2 and kept.scores.tolist() == pytest.approx([0.9, 0.8])
    np.testing.assert_array_equal(kept.masks[0], whole)
    np.testing.assert_array_equal(kept.masks[1], other & ~whole)


def test_corrections_on_a_later_frame_re_prompt_from_there(model):
    # object 1 jumps 60 px on frame 6: the tracker loses it; a correction on frame 9 finds it again
    path = [(40, 40 + t) if t < 6 else (100, 100 + t) for t in range(T)]
    frames, truth = disks({1: (14, path), 2: (14, [(110, 30)] * T)})
    start = boxes(truth[0], [1, 2])
    lost = track(frames, start, model=model)
    assert [t for t, f in enumerate(lost) if 1 in f.ids] == list(range(6))
    corrected = track(frames, {0: start, 9: {1: boxes(truth[9], [1])[0]}}, model=model)
    assert_follows(corrected, truth, 1, range(T), least_iou=0.5)  # 9..11 forwards, 8, 7, 6 backwards from 9
    for t in range(T):
        if t < 6:  # before the jump nothing changed
            np.testing.assert_array_equal(corrected[t].masks, lost[t].masks)
        np.testing.assert_array_equal(masks_by_id(corrected[t])[2], masks_by_id(lost[t])[2])
    # a correction may also give an id to another object: from there on the id follows that one
    frames, truth = disks(moving(EASY))
    switched = track(frames, {0: boxes(truth[0], [1]), 5: [boxes(truth[5], [2])[0]]}, model=model)
    assert_follows(switched, truth, 1, range(5))
    assert_follows(switched, truth, 1, range(5, T), truth_id=2)


def test_forward_and_backward_from_a_middle_keyframe(easy, model):
    frames, truth = easy
    result = track(frames, boxes(truth[6], [1, 2, 3]), start_frame=6, model=model)
    assert all(found.ids.tolist() == [1, 2, 3] for found in result)
    for object_id in (1, 2, 3):
        assert_follows(result, truth, object_id, range(T))
    assert model.encoder_runs == T  # every frame encoded once, the keyframe for its prompts too
    given = Instances.from_masks(np.stack([truth[6][i] for i in (1, 2, 3)]), np.array([0.9, 0.8, 0.7]),
                                 ids=np.array([7, 8, 9]))
    again = track(frames, given, start_frame=6, model=model)
    assert model.encoder_runs == T  # cached: nothing encoded again
    assert all(found.ids.tolist() == [7, 8, 9] for found in again)
    np.testing.assert_array_equal(again[6].masks, given.masks)  # the keyframe keeps what was given
    np.testing.assert_allclose(again[6].scores, [0.9, 0.8, 0.7])


def test_all_objects_of_a_frame_go_through_one_decoder_call(model):
    grid = [(14, 40 + 85 * (k // 4), 35 + 62 * (k % 4), 0.6, 0.6) for k in range(10)]  # 10 disks, 256 x 256
    frames, truth = disks(moving(grid), size=(256, 256))
    calls = counting_decoder(model)
    result = track(frames, boxes(truth[0], range(1, 11)), model=model)
    assert calls == [10] * T  # the keyframe's 10 box prompts, then one batch of 10 on each next frame
    assert model.encoder_runs == T
    assert all(found.ids.tolist() == list(range(1, 11)) for found in result)


def test_propagate_is_the_one_object_case(easy, model):
    frames, truth = easy
    calls = counting_decoder(model)
    one = unisam.propagate(frames, 4, truth[4][2], model=model, object_id=2, min_overlap=0.5)
    assert calls == [1] * (T - 1) and model.encoder_runs == T - 1  # the start slice needs no decoding
    assert all(found.ids.tolist() == [2] for found in one)
    assert_follows(one, truth, 2, range(T))
    same = track(frames, Instances.from_masks(truth[4][2][None], ids=np.array([2])), start_frame=4, model=model,
                 **dataclasses.asdict(unisam.StopRules(min_overlap=0.5)))
    for a, b in zip(one, same):
        np.testing.assert_array_equal(a.masks, b.masks)


def test_a_video_file_is_tracked_like_its_frames(tmp_path, easy, model):
    frames, truth = easy
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    path = tmp_path / "easy.mkv"
    with av.open(str(path), "w") as container:  # lossless: the decoded frames equal the array
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "bgr0"
        for frame in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    from_file = track(path, boxes(truth[0], [1, 2, 3]), model=model)
    from_array = track(rgb, boxes(truth[0], [1, 2, 3]), model=model)
    assert model.encoder_runs == T  # the same pixels: the second run hits the cache
    for a, b in zip(from_file, from_array):
        np.testing.assert_array_equal(a.masks, b.masks)
        assert a.ids.tolist() == b.ids.tolist() == [1, 2, 3]


def test_automatic_mode_links_segment_everything(easy, model):
    frames, truth = easy
    result = track(frames, model=model, points_per_side=16)
    assert model.encoder_runs == T  # segment everything and the linking features share the embedding
    # each drawn disk is one track: the same id on every frame, on the disk
    for object_id in (1, 2, 3):
        ids = set()
        for t in range(T):
            best = max(zip(result[t].ids.tolist(), result[t].masks), key=lambda m: mask_iou(m[1], truth[t][object_id]))
            assert mask_iou(best[1], truth[t][object_id]) > 0.6, (object_id, t)
            ids.add(best[0])
        assert len(ids) == 1, (object_id, ids)


def test_automatic_mode_with_own_segmentation_records_divisions():
    scene = generate_tracking_scene(np.random.default_rng(0), 16, (128, 128), objects=1, events=("divide",))
    parent, children = next(iter(scene.truth.lineage.items()))
    labels = scene.truth.to_label_stack()
    relabelled = np.zeros_like(labels)  # per-frame labels with unrelated numbers: ids are not linked yet
    for t, frame in enumerate(labels):
        for k, value in enumerate(np.unique(frame)[1:], 1):
            relabelled[t][frame == value] = 10 * t + k
    result = track(scene.frames, instances=relabelled, method="laptrack", feature_weight=0.0)
    assert len(result.lineage) == 1
    [(mother, daughters)] = result.lineage.items()
    assert len(daughters) == 2
    spans = result.spans()
    assert spans[mother][1] + 1 == spans[daughters[0]][0] == spans[daughters[1]][0]  # divides, then two
    assert spans[mother][1] == scene.truth.spans()[parent][1]
    linked = track(scene.frames, instances=list(scene.truth), feature_weight=0.0)  # Hungarian, no model
    assert linked.lineage == {} and [len(f) for f in linked] == [len(f) for f in scene.truth]
    assert len(children) == 2


def test_bad_input_is_rejected(easy, tmp_path):
    frames, truth = easy
    start = boxes(truth[0], [1])
    with pytest.raises(ValueError, match="size"):
        track([frames[0], frames[1][:100]], start)
    with pytest.raises(ValueError, match="no frames"):
        track([], start)
    with pytest.raises(ValueError, match=rf"frame\(s\) \[{T}\], outside the {T} frames"):
        track(frames, start, start_frame=T)
    with pytest.raises(ValueError, match=r"frame\(s\) \[-1, 20\], outside"):
        track(frames, {0: start, 20: start, -1: start})
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="cannot read video"):
        track(corrupt, start)
    with pytest.raises(ValueError, match="outside the image"):
        track(frames, [Prompt(points=[[W + 5, 10]])])
    with pytest.raises(ValueError, match="size"):
        track(frames, Instances.from_masks(np.ones((1, 10, 10), bool)))
    with pytest.raises(ValueError, match="unknown option 'patiense' for prompted tracking"):
        track(frames, start, patiense=3)
    with pytest.raises(ValueError, match="unknown option 'patience' for automatic tracking"):
        track(frames, patience=3)
    with pytest.raises(ValueError, match="start_frame"):
        track(frames, {0: start}, start_frame=2)
    with pytest.raises(ValueError, match="instances= is the segmentation of automatic mode"):
        track(frames, start, instances=list(range(T)))
    with pytest.raises(ValueError, match=f"instances has 3 frames, the sequence {T}"):
        track(frames, instances=[Instances.empty(H, W)] * 3, feature_weight=0.0)


def test_progress_counts_frames_up_to_the_total(easy, model):
    frames, truth = easy
    calls: list[tuple[int, int]] = []
    track(frames, boxes(truth[6], [1, 2]), start_frame=6, model=model, progress=lambda *c: calls.append(c))
    total = (T - 6) + (6 + 1)  # forwards from frame 6 to the end, backwards from 6 to the start
    assert {t for _, t in calls} == {total} and calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[0] == 1 and len(done) == total
    calls.clear()
    scene = generate_tracking_scene(np.random.default_rng(0), 6, (96, 96), objects=2, events=())
    track(scene.frames, instances=list(scene.truth), feature_weight=0.0, progress=lambda *c: calls.append(c))
    assert calls == [(0, 0)]  # linking given masks by overlap: nothing per frame, one call at the end
    calls.clear()
    track(frames[:4], model=model, points_per_side=8, progress=lambda *c: calls.append(c))
    assert calls == [(k, 8) for k in range(1, 9)]  # 4 frames segmented, then 4 pooled for linking
    with pytest.raises(ValueError, match="progress must be"):
        track(frames, boxes(truth[0], [1]), model=model, progress="yes")
