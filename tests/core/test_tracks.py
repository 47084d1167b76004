"""unisam.tracks.Tracks: label stacks, spans, the MOT CSV and the Cell Tracking Challenge format, the
latter checked by py-ctcmetrics (the CTC's own metrics: a result written by Tracks must be valid and
score 1 against itself as ground truth)."""

import csv
import dataclasses

import numpy as np
import pytest
import tifffile
from ctc_metrics.scripts.evaluate import evaluate_sequence

from unisam.instances import Instances
from unisam.tracks import Tracks

T, H, W = 6, 24, 32


def hand_stack() -> np.ndarray:
    """(T, H, W) labels: 1 drifts right on every frame; 3 is absent on frame 2 (a gap); 1 divides
    after frame 3 into 5 and 6."""
    stack = np.zeros((T, H, W), np.int32)
    for t in range(T):
        if t <= 3:
            stack[t, 2:8, 2 + t : 8 + t] = 1
        else:
            stack[t, 2:6, 6:10] = 5
            stack[t, 8:12, 6:10] = 6
        if t != 2:
            stack[t, 15:20, 20:26] = 3
    return stack


LINEAGE = {1: [5, 6]}


def test_label_stack_round_trip_ids_and_spans():
    stack = hand_stack()
    tracks = Tracks.from_label_stack(stack, LINEAGE)
    assert len(tracks) == T and tracks.lineage == LINEAGE
    assert np.array_equal(tracks.to_label_stack(), stack)
    assert tracks.ids().tolist() == [1, 3, 5, 6]
    assert tracks.spans() == {1: (0, 3), 3: (0, 5), 5: (4, 5), 6: (4, 5)}
    assert tracks[2].ids.tolist() == [1]
    assert tracks[0].boxes[0].tolist() == [2, 2, 8, 8]  # pixel edges: columns 2..7 -> x2 = 8
    assert isinstance(tracks, list) and all(isinstance(f, Instances) for f in tracks)


def test_centroids_are_id_frame_y_x_rows_sorted_by_id_then_frame():
    table = Tracks.from_label_stack(hand_stack(), LINEAGE).centroids()
    assert table.shape == (4 + 5 + 2 + 2, 4)
    assert table[:, 0].tolist() == [1] * 4 + [3] * 5 + [5] * 2 + [6] * 2
    assert table[:4, 1].tolist() == [0, 1, 2, 3]  # object 1 on frames 0..3
    assert 2 not in table[table[:, 0] == 3, 1]  # object 3 is absent on frame 2
    assert table[0, 2:].tolist() == [4.5, 4.5]  # rows 2..7, columns 2..7
    assert table[3, 2:].tolist() == [4.5, 7.5]  # moved right by 3
    assert Tracks([Instances.empty(H, W)]).centroids().shape == (0, 4)


def test_mot_csv_has_one_based_frames_and_pixel_edge_boxes(tmp_path):
    tracks = Tracks.from_label_stack(hand_stack())
    rows = list(csv.reader(tracks.write_mot(tmp_path / "mot.txt").open()))
    assert len(rows) == sum(len(f) for f in tracks)
    assert rows[0] == ["1", "1", "2", "2", "6", "6", "1.0000", "-1", "-1", "-1"]
    frames = {int(r[0]) for r in rows}
    assert frames == set(range(1, T + 1))
    gap = [r for r in rows if r[1] == "3"]
    assert [int(r[0]) for r in gap] == [1, 2, 4, 5, 6]  # absent on frame 3 (1-based)
    assert gap[0][2:6] == ["20", "15", "6", "5"]


def test_ctc_result_cuts_gaps_links_divisions_and_keeps_ids(tmp_path):
    Tracks.from_label_stack(hand_stack(), LINEAGE).write_ctc(tmp_path)
    rows = sorted(tuple(map(int, line.split())) for line in (tmp_path / "res_track.txt").read_text().splitlines())
    # 3 is cut at its gap: frames 0-1 keep label 3, frames 3-5 get a new label (7) whose parent is 3
    assert rows == [(1, 0, 3, 0), (3, 0, 1, 0), (5, 4, 5, 1), (6, 4, 5, 1), (7, 3, 5, 3)]
    masks = sorted(p.name for p in tmp_path.glob("*.tif"))
    assert masks == [f"mask{t:03d}.tif" for t in range(T)]
    image = tifffile.imread(tmp_path / "mask004.tif")
    assert image.dtype == np.uint16
    assert set(np.unique(image)) == {0, 5, 6, 7}


def test_ctc_metrics_score_a_written_result_perfect_against_itself(tmp_path):
    tracks = Tracks.from_label_stack(hand_stack(), LINEAGE)
    tracks.write_ctc(tmp_path / "gt", truth=True)
    tracks.write_ctc(tmp_path / "res")
    assert (tmp_path / "gt" / "TRA" / "man_track.txt").exists()
    assert len(list((tmp_path / "gt" / "SEG").glob("man_seg*.tif"))) == T
    scores = evaluate_sequence(str(tmp_path / "res"), str(tmp_path / "gt"),
                               ["Valid", "DET", "SEG", "TRA", "IDF1", "MOTA", "HOTA"], threads=1)
    assert scores["Valid"] == 1
    for name in ("DET", "SEG", "TRA", "IDF1", "MOTA", "HOTA"):
        assert scores[name] == pytest.approx(1.0), name


def test_ctc_metrics_see_a_swapped_id(tmp_path):
    """A result whose ids of 1 and 3 swap halfway scores below 1 (the check above can fail)."""
    truth = Tracks.from_label_stack(hand_stack(), LINEAGE)
    truth.write_ctc(tmp_path / "gt", truth=True)
    swapped = hand_stack()
    later = swapped[3:]
    one, three = later == 1, later == 3
    later[one], later[three] = 3, 1
    Tracks.from_label_stack(swapped, {3: [5, 6]}).write_ctc(tmp_path / "res")
    scores = evaluate_sequence(str(tmp_path / "res"), str(tmp_path / "gt"), ["Valid", "TRA", "IDF1"], threads=1)
    assert scores["Valid"] == 1
    assert scores["TRA"] < 0.99 and scores["IDF1"] < 0.9


def test_bad_tracks_raise_clear_errors(tmp_path):
    mask = np.zeros((1, H, W), bool)
    mask[0, :3, :3] = True
    with pytest.raises(ValueError, match="without ids"):
        Tracks([Instances.from_masks(mask)])
    with pytest.raises(ValueError, match="appears twice"):
        Tracks([Instances.from_masks(np.concatenate([mask, mask]), ids=[4, 4])])
    with pytest.raises(ValueError, match="one \\(H, W\\)"):
        Tracks([Instances.empty(H, W), Instances.empty(H + 1, W)])
    with pytest.raises(TypeError, match="expected Instances"):
        Tracks([mask])
    with pytest.raises(ValueError, match="integer"):
        Tracks.from_label_stack(np.zeros((2, H, W), np.float32))
    with pytest.raises(ValueError, match="at least one frame"):
        Tracks().to_label_stack()
    big = Tracks([Instances.from_masks(mask, ids=[70000])])
    with pytest.raises(ValueError, match="uint16"):
        big.write_ctc(tmp_path / "big")
    late = Tracks.from_label_stack(hand_stack(), {3: [5]})  # 3 lives on after 5 is born
    with pytest.raises(ValueError, match="lineage 3 -> 5"):
        late.write_ctc(tmp_path / "late")


def test_empty_frames_are_kept_with_empty_ids():
    tracks = Tracks([Instances.empty(H, W), Instances.from_masks(np.ones((1, H, W), bool), ids=[2])])
    assert tracks[0].ids.tolist() == [] and tracks.ids().tolist() == [2]
    assert tracks.spans() == {2: (1, 1)}
    assert tracks.to_label_stack()[0].max() == 0


def test_vote_labels_gives_each_track_the_name_with_the_highest_summed_score():
    tracks = Tracks.from_label_stack(hand_stack()[:3], {})  # ids 1 and 3 (3 absent on frame 2)
    votes = {1: [("cat", 0.9), ("dog", 0.6), ("dog", 0.5)],  # dog 1.1 beats cat 0.9 though cat's best is higher
             3: [(None, 0.8), ("cat", 0.3)]}                  # an unnamed frame votes too: None wins
    frames = []
    for t, frame in enumerate(tracks):
        names = [votes[i][t][0] for i in frame.ids.tolist()]
        scores = [votes[i][t][1] for i in frame.ids.tolist()]
        frames.append(dataclasses.replace(frame, labels=names, label_scores=np.array(scores, np.float32)))
    voted = Tracks(frames, tracks.lineage).vote_labels()
    assert [dict(zip(f.ids.tolist(), f.labels)) for f in voted] == [{1: "dog", 3: None}, {1: "dog", 3: None}, {1: "dog"}]
    np.testing.assert_allclose([s for f in voted for s in f.label_scores], [1.1 / 3, 0.8 / 2, 1.1 / 3, 0.8 / 2, 1.1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(voted[1].masks, tracks[1].masks)
    unlabelled = Tracks.from_label_stack(hand_stack(), LINEAGE).vote_labels()
    assert all(f.labels is None for f in unlabelled) and unlabelled.lineage == LINEAGE
