"""``Tracks``: what tracking returns, one :class:`~unisam.instances.Instances` per frame with ``ids``
filled (the same id for the same object on every frame where it is present), plus the lineage of
dividing objects, and its exports: label stacks, the MOT-challenge CSV and the Cell Tracking Challenge
(CTC) format.

Boxes follow unisam's one convention (:mod:`unisam.masks`): pixel-edge ``(x1, y1, x2, y2)``, 0-based.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .instances import Instances

CTC_MAX_LABEL = 65535  # CTC label images are uint16


class Tracks(list):
    """A list of per-frame ``Instances`` (each with ``ids``) and ``lineage``: ``{parent id: [child
    ids]}``, a parent's track ending before its children's begin (cell division).

    Every frame must have the same ``(H, W)``, and no id may appear twice in one frame. An empty
    ``Instances`` may have ``ids=None``; it is stored with an empty ``ids`` array.
    """

    def __init__(self, frames: Iterable[Instances] = (), lineage: Mapping[int, Sequence[int]] | None = None):
        frames = [_with_ids(f, t) for t, f in enumerate(frames)]
        sizes = {f.image_size for f in frames}
        if len(sizes) > 1:
            raise ValueError(f"all frames of a track list must have one (H, W); got {sorted(sizes)}")
        super().__init__(frames)
        self.lineage: dict[int, list[int]] = {int(p): [int(c) for c in cs] for p, cs in (lineage or {}).items()}

    def __repr__(self) -> str:
        return f"Tracks({len(self)} frames, {len(self.ids())} tracks, {len(self.lineage)} divisions)"

    def ids(self) -> np.ndarray:
        """``(K,)`` int64: every track id, sorted."""
        parts = [f.ids for f in self if len(f)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def spans(self) -> dict[int, tuple[int, int]]:
        """``{id: (first frame, last frame)}`` (0-based, inclusive; the object may be absent between)."""
        out: dict[int, tuple[int, int]] = {}
        for t, frame in enumerate(self):
            for i in frame.ids.tolist():
                out[i] = (out[i][0], t) if i in out else (t, t)
        return out

    def centroids(self) -> np.ndarray:
        """``(M, 4)`` float64 rows ``(id, frame, y, x)``: each object's mask centroid (pixel centres,
        0-based) on each frame where it is present, sorted by id then frame; the table a napari
        ``Tracks`` layer takes, with ``lineage`` inverted as its ``graph`` ({child: [parent]})."""
        rows = []
        for t, frame in enumerate(self):
            for i, mask in zip(frame.ids.tolist(), frame.masks):
                ys, xs = np.nonzero(mask)
                if len(ys):
                    rows.append((i, t, ys.mean(), xs.mean()))
        table = np.array(rows, np.float64).reshape(-1, 4)
        return table[np.lexsort((table[:, 1], table[:, 0]))]

    def vote_labels(self) -> Tracks:
        """One label per track ("one object, one id, one name"): each track takes the label whose
        ``label_scores`` summed over the track's frames are highest (an unnamed ``None`` votes too),
        and as its ``label_score`` that sum divided by the frames where the track is present. Frames
        without labels are left as they are; ``label_topk`` stays per frame."""
        totals: dict[int, dict[str | None, float]] = {}
        present: dict[int, int] = {}
        for frame in self:
            if frame.labels is None:
                continue
            scores = frame.label_scores if frame.label_scores is not None else np.ones(len(frame), np.float32)
            for i, name, score in zip(frame.ids.tolist(), frame.labels, scores.tolist()):
                votes = totals.setdefault(i, {})
                votes[name] = votes.get(name, 0.0) + score
                present[i] = present.get(i, 0) + 1
        winner = {i: max(votes.items(), key=lambda kv: kv[1]) for i, votes in totals.items()}
        frames = []
        for frame in self:
            if frame.labels is not None:
                frame = dataclasses.replace(
                    frame, labels=[winner[i][0] for i in frame.ids.tolist()],
                    label_scores=np.array([winner[i][1] / present[i] for i in frame.ids.tolist()], np.float32))
            frames.append(frame)
        return Tracks(frames, self.lineage)

    def to_label_stack(self) -> np.ndarray:
        """``(T, H, W)`` int32: 0 background, the track id inside each mask (ids must be > 0; where
        masks overlap, the higher-scoring one wins, see :meth:`Instances.to_label_image`)."""
        if not self:
            raise ValueError("no frames: a label stack needs at least one frame for its (H, W)")
        return np.stack([f.to_label_image() for f in self])

    @classmethod
    def from_label_stack(cls, stack: np.ndarray, lineage: Mapping[int, Sequence[int]] | None = None) -> Tracks:
        """Tracks from a ``(T, H, W)`` integer label stack (0 background, label = track id); scores 1."""
        stack = np.asarray(stack)
        if stack.ndim != 3 or not np.issubdtype(stack.dtype, np.integer):
            raise ValueError(f"a label stack must be a (T, H, W) integer array, got {stack.dtype} {stack.shape}")
        frames = []
        for label in stack:
            ids = np.unique(label)
            ids = ids[ids != 0]
            if len(ids) and ids.min() < 0:
                raise ValueError(f"labels must be >= 0 (0 is the background), got {int(ids.min())}")
            frames.append(Instances.from_masks(label[None] == ids[:, None, None], ids=ids))
        return cls(frames, lineage)

    def write_mot(self, path: str | Path) -> Path:
        """Write the MOT-challenge CSV: one line ``frame, id, bb_left, bb_top, bb_width, bb_height,
        conf, -1, -1, -1`` per object and frame, frames 1-based, boxes in pixels as unisam's pixel-edge
        boxes (``bb_left = x1``, ``bb_width = x2 - x1``), conf = the instance's score."""
        path = Path(path)
        lines = []
        for t, frame in enumerate(self, 1):
            for i, (x1, y1, x2, y2), score in zip(frame.ids.tolist(), frame.boxes.tolist(), frame.scores.tolist()):
                lines.append(f"{t},{i},{x1:g},{y1:g},{x2 - x1:g},{y2 - y1:g},{score:.4f},-1,-1,-1\n")
        path.write_text("".join(lines))
        return path

    def write_ctc(self, directory: str | Path, *, truth: bool = False) -> Path:
        """Write the Cell Tracking Challenge format into ``directory`` and return it.

        Results (``truth=False``): ``maskTTT.tif`` uint16 label images and ``res_track.txt`` with one
        ``L B E P`` line per track (label, first and last frame, parent label or 0). Ground truth
        (``truth=True``): ``TRA/man_trackTTT.tif``, ``TRA/man_track.txt`` and ``SEG/man_segTTT.tif``.
        TTT has 3 digits (4 from 1000 frames on). CTC tracks are contiguous: a track that is absent on
        some frames is cut there and each later piece gets a new label whose parent is the piece before
        it. Labels are the track ids where possible (they must be <= 65535).
        """
        tifffile = _tifffile()
        stack = self.to_label_stack()
        relabel, rows = _ctc_segments(stack, self.lineage)
        directory = Path(directory)
        digits = max(3, len(str(len(self) - 1)))
        if truth:
            targets = [(directory / "TRA", "man_track"), (directory / "SEG", "man_seg")]
            table = directory / "TRA" / "man_track.txt"
        else:
            targets, table = [(directory, "mask")], directory / "res_track.txt"
        for folder, _ in targets:
            folder.mkdir(parents=True, exist_ok=True)
        for t, label in enumerate(stack):
            image = relabel[t][label].astype(np.uint16)
            for folder, prefix in targets:
                tifffile.imwrite(folder / f"{prefix}{t:0{digits}d}.tif", image)
        table.write_text("".join(f"{a} {b} {e} {p}\n" for a, b, e, p in rows))
        return directory


def _with_ids(frame: Instances, t: int) -> Instances:
    if not isinstance(frame, Instances):
        raise TypeError(f"frame {t}: expected Instances, got {type(frame).__name__}")
    if frame.ids is None:
        if len(frame):
            raise ValueError(f"frame {t}: Instances without ids; every tracked instance needs an id")
        return Instances(frame.masks, frame.boxes, frame.scores, frame.labels, frame.label_scores,
                         np.zeros(0, np.int64))
    if len(np.unique(frame.ids)) != len(frame):
        raise ValueError(f"frame {t}: an id appears twice ({frame.ids.tolist()})")
    return frame


def _ctc_segments(stack: np.ndarray, lineage: Mapping[int, Sequence[int]]) -> tuple[list[np.ndarray], list[tuple]]:
    """CTC tracks of a label stack: per frame a lookup table track id -> CTC label, and the
    ``(L, B, E, P)`` rows. Runs of frames where an id is present become tracks; a later run's parent
    is the run before it, a child's first run's parent its parent's last run."""
    top = int(stack.max(initial=0))
    if top > CTC_MAX_LABEL:
        raise ValueError(f"track id {top} does not fit a CTC uint16 label image (at most {CTC_MAX_LABEL})")
    present = np.zeros((len(stack), top + 1), bool)
    for t, label in enumerate(stack):
        present[t, np.unique(label)] = True
    present[:, 0] = False
    relabel = [np.zeros(top + 1, np.int64) for _ in stack]
    rows, first, last = [], {}, {}
    fresh = top
    for i in np.flatnonzero(present.any(axis=0)).tolist():
        frames = np.flatnonzero(present[:, i])
        runs = np.split(frames, np.flatnonzero(np.diff(frames) > 1) + 1)
        parent = 0
        for k, run in enumerate(runs):
            if k:
                fresh += 1
            label = fresh if k else i
            if label > CTC_MAX_LABEL:
                raise ValueError(f"cutting tracks at their gaps needs more than {CTC_MAX_LABEL} CTC labels")
            for t in run.tolist():
                relabel[t][i] = label
            rows.append([label, int(run[0]), int(run[-1]), parent])
            parent = label
        first[i], last[i] = rows[-len(runs)], rows[-1]
    for p, children in lineage.items():
        for c in children:
            if p not in last or c not in first:
                continue  # a division whose parent or child was never drawn has no CTC link
            if last[p][2] >= first[c][1]:
                raise ValueError(f"lineage {p} -> {c}: the parent's track ends on frame {last[p][2]}, "
                                 f"not before its child's begins ({first[c][1]})")
            first[c][3] = last[p][0]
    return relabel, [tuple(r) for r in rows]


def _tifffile():
    try:
        import tifffile
    except ImportError:
        raise ImportError("writing the CTC format needs tifffile: pip install 'unisam[cells]'") from None
    return tifffile
