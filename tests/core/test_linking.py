"""unisam.runtime.linking: pooled embedding features and linking per-frame instances into tracks
(Hungarian and laptrack), on tracking scenes whose truth is exact: the truth masks, shuffled and with
their ids removed, are linked and the ids compared with the truth's."""

import numpy as np
import pytest

import unisam
from unisam.data.synthetic import generate_tracking_scene
from unisam.instances import Instances
from unisam.runtime.cache import Embedding
from unisam.runtime.linking import link, pool_features
from unisam.tracks import Tracks

T = 16
METHODS = ["hungarian", "laptrack"]


def scene(*events, seed=0, objects=0, n_frames=T):
    return generate_tracking_scene(np.random.default_rng(seed), n_frames, events=events, objects=objects)


def detections(truth: Tracks, seed: int = 0) -> tuple[list[Instances], list[np.ndarray]]:
    """The truth's masks per frame in a random order without ids, and each one's truth id."""
    rng = np.random.default_rng(seed)
    frames, ids = [], []
    for found in truth:
        order = rng.permutation(len(found))
        frames.append(Instances.from_masks(found.masks[order]))
        ids.append(found.ids[order])
    return frames, ids


def correspondence(truth_ids: list[np.ndarray], tracks: Tracks) -> tuple[dict, dict]:
    """truth id -> the set of ids it got, and id -> the set of truth ids it was given to."""
    got, given = {}, {}
    for a, b in zip(truth_ids, tracks):
        for x, y in zip(a.tolist(), b.ids.tolist()):
            got.setdefault(x, set()).add(y)
            given.setdefault(y, set()).add(x)
    return got, given


def assert_one_to_one(truth_ids, tracks):
    got, given = correspondence(truth_ids, tracks)
    assert all(len(v) == 1 for v in got.values()), got
    assert all(len(v) == 1 for v in given.values()), given
    return {x: next(iter(v)) for x, v in got.items()}


def one_hot_embedding(original, input_size, grid=16):
    """Features whose channel k is 1 on cell k (row-major) of a ``grid x grid`` map, else 0."""
    features = np.eye(grid * grid, dtype=np.float32).reshape(1, grid * grid, grid, grid)
    return Embedding(features, original, input_size, "m", "d")


def test_pool_features_weight_each_cell_by_the_mask_area_in_it():
    # (128, 256) image, model side 256, 16 x 16 cells of 16 px; the image fills cell rows 0-7
    emb = one_hot_embedding((128, 256), (128, 256))
    image = np.zeros(256, np.float32)
    image[: 8 * 16] = 1 / 128  # the image's mean feature: uniform over the cells it covers
    masks = np.zeros((3, 128, 256), bool)
    masks[0, 32:48, 48:64] = True  # exactly cell (2, 3)
    masks[1, 32:48, 56:72] = True  # half in cell (2, 3), half in (2, 4)
    out = pool_features(emb, masks)
    assert out.shape == (3, 256) and out.dtype == np.float32
    expected = np.zeros((2, 256), np.float32)
    expected[0, 2 * 16 + 3] = 1
    expected[1, [2 * 16 + 3, 2 * 16 + 4]] = 0.5
    expected -= image
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out[:2], expected, atol=1e-6)
    assert not out[2].any()  # an empty mask
    # a (64, 128) image resized 2x: the same cell is 8 original pixels a side
    small = np.zeros((1, 64, 128), bool)
    small[0, 16:24, 24:32] = True
    np.testing.assert_allclose(pool_features(one_hot_embedding((64, 128), (128, 256)), small)[0], expected[0], atol=1e-6)


def test_pool_features_of_the_whole_image_is_its_mean_so_zero():
    emb = Embedding(np.random.default_rng(0).normal(size=(1, 8, 16, 16)).astype(np.float32), (100, 60), (256, 154), "m", "d")
    out = pool_features(emb, np.ones((1, 100, 60), bool))
    assert np.abs(out).max() < 1e-3
    with pytest.raises(ValueError, match="masks must be"):
        pool_features(emb, np.ones((1, 60, 100), bool))


@pytest.fixture(scope="module")
def model():
    return unisam.get_model("unisam-tiny")


def test_pooled_features_of_the_bundled_model_recognise_objects_between_frames(model):
    frames, truth = scene("touch", "cross", objects=5, n_frames=8)
    features = [pool_features(model.embed(f), found.masks) for f, found in zip(frames, truth)]
    hits = total = 0
    for t in range(len(frames) - 1):
        similar = features[t] @ features[t + 1].T
        for i, x in enumerate(truth[t].ids.tolist()):
            if x in truth[t + 1].ids:
                total += 1
                hits += truth[t + 1].ids[np.argmax(similar[i])] == x
    assert hits >= 0.9 * total
    # and linking with them keeps every id on this scene
    found, ids = detections(truth)
    reordered = [pool_features(model.embed(f), d.masks) for f, d in zip(frames, found)]
    assert_one_to_one(ids, link(found, reordered, feature_weight=0.5))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ids_stay_constant_on_an_easy_sequence(method, seed):
    _, truth = scene(objects=6, seed=seed)
    found, ids = detections(truth, seed)
    tracks = link(found, method=method)
    assert isinstance(tracks, Tracks) and len(tracks) == T and tracks.lineage == {}
    assert_one_to_one(ids, tracks)
    assert tracks.ids().tolist() == list(range(1, len(truth.ids()) + 1))
    for f, g in zip(found, tracks):  # the same instances, in the same order
        assert np.array_equal(f.masks, g.masks)


@pytest.mark.parametrize("method, seed", [(m, s) for m in METHODS for s in range(4) if (m, s) != ("laptrack", 1)])
def test_an_object_leaving_the_frame_ends_its_track_and_its_id_is_not_reused(method, seed):
    _, truth = scene("leave", "enter", objects=3, seed=seed)
    # body order: the events' bodies come first. (On seed 1 the newcomer enters where the other one
    # left, one frame later: overlap alone, laptrack's cost, links them; the Hungarian linker's
    # motion model sees the first one move on out of the frame.)
    leaving, entering = 1, 2
    spans = truth.spans()
    assert spans[leaving][1] < T - 1 and spans[entering][0] > 0
    found, ids = detections(truth, seed)
    tracks = link(found, method=method)
    mapping = assert_one_to_one(ids, tracks)
    gone = mapping[leaving]
    assert tracks.spans()[gone] == spans[leaving]  # ends where the object left
    earlier = {i for f in tracks[: spans[entering][0]] for i in f.ids.tolist()}
    assert mapping[entering] not in earlier  # a new object gets a new id


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_division_yields_two_children_of_one_parent(seed):
    _, truth = scene("divide", objects=2, seed=seed)
    assert truth.lineage == {1: [2, 3]}
    found, ids = detections(truth, seed)
    tracks = link(found, method="laptrack")
    mapping = assert_one_to_one(ids, tracks)
    assert tracks.lineage == {mapping[1]: sorted([mapping[2], mapping[3]])}
    parent_end = tracks.spans()[mapping[1]][1]
    assert all(tracks.spans()[mapping[c]][0] == parent_end + 1 for c in (2, 3))
    # the Hungarian linker records no divisions: one daughter carries the mother's id on
    hungarian = link(found)
    assert hungarian.lineage == {}
    got, _ = correspondence(ids, hungarian)
    assert len(got[2] | got[3]) == 2 and got[1] <= got[2] | got[3]


@pytest.mark.parametrize("method", METHODS)
def test_gap_closing_across_a_missing_frame(method):
    _, truth = scene(objects=5, seed=4)
    found, ids = detections(truth)
    t, k = 7, 0  # the object listed first on frame 7 is missed there
    missing = int(ids[t][k])
    found[t], ids[t] = found[t][np.arange(1, len(found[t]))], ids[t][1:]
    closed = link(found, method=method, max_gap=1)
    mapping = assert_one_to_one(ids, closed)
    assert missing in mapping
    assert len(closed.ids()) == len(truth.ids())
    broken = link(found, method=method, max_gap=0)
    got, _ = correspondence(ids, broken)
    assert len(got[missing]) == 2  # without gap closing it comes back under a new id
    assert all(len(v) == 1 for x, v in got.items() if x != missing)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crossing_objects_keep_their_ids_with_the_motion_model(seed):
    _, truth = scene("cross", "touch", objects=2, seed=seed, n_frames=20)
    found, ids = detections(truth, seed)
    assert_one_to_one(ids, link(found))


@pytest.mark.parametrize("method", METHODS)
def test_every_link_above_min_iou_is_taken_and_none_below(method):
    a, b, c = (np.zeros((1, 30, 30), bool) for _ in range(3))
    a[0, 5:15, 5:15] = True
    b[0, 5:15, 10:20] = True  # IoU with a: 50 / 150 = 0.33
    c[0, 5:15, 12:22] = True  # IoU with a: 30 / 170 = 0.18
    for shifted, kept in ((b, True), (c, False)):
        tracks = link([Instances.from_masks(a), Instances.from_masks(shifted)], method=method, min_iou=0.3)
        assert (tracks[1].ids[0] == tracks[0].ids[0]) == kept
        assert (link([Instances.from_masks(a), Instances.from_masks(shifted)], method=method, min_iou=0.15)[1].ids[0]
                == 1)


def test_features_decide_between_equally_overlapping_objects():
    h, w = 20, 20
    a, b, p, q = (np.zeros((h, w), bool) for _ in range(4))
    a[:10, :10], b[:10, 10:] = True, True  # frame 0: A left, B right
    p[:10, 5:15], q[10:, 5:15] = True, True  # frame 1: P overlaps A and B alike; Q overlaps neither
    frames = [Instances.from_masks(np.stack([a, b])), Instances.from_masks(np.stack([p, q]))]
    e = np.eye(2, dtype=np.float32)
    for who in (0, 1):  # P looks like A, then like B
        features = [e, np.stack([e[who], e[1 - who]])]
        for method in METHODS:
            tracks = link(frames, features, method=method, feature_weight=0.5)
            assert tracks[1].ids[0] == tracks[0].ids[who], (method, who)
            assert tracks[1].ids[1] not in tracks[0].ids


def test_frames_without_objects_and_bad_input():
    empty = [Instances.empty(8, 8)] * 3
    for method in METHODS:
        tracks = link(empty, method=method)
        assert len(tracks) == 3 and tracks.ids().tolist() == []
    one = Instances.from_masks(np.ones((1, 8, 8), bool))
    with pytest.raises(ValueError, match="one \\(H, W\\)"):
        link([one, Instances.empty(8, 9)])
    with pytest.raises(ValueError, match="method"):
        link([one], method="greedy")
    with pytest.raises(ValueError, match="features has 1 entries for 2"):
        link([one, one], [np.ones((1, 4))])
    with pytest.raises(ValueError, match=r"frame 1: features must be \(1, C\)"):
        link([one, one], [np.ones((1, 4)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="max_gap"):
        link([one], max_gap=-1)
