"""Frames per second of unisam.track (prompted) for 1 and 10 objects at 512x512, side by side with
running ``segment`` from scratch on every frame (encoder + decoder each time).

    python benchmarks/track_speed.py                       # the bundled unisam-tiny
    python benchmarks/track_speed.py --model DIR           # any export directory or registered name
    python benchmarks/track_speed.py --random-edgesam      # EdgeSAM's architecture, random weights
                                                           # (the torch extra; same compute as EdgeSAM)

The scene: disks drawn on 512x512 frames, moving slowly, so every object stays tracked on every
frame; the tracker starts from their masks on frame 0 (``segment`` gets each frame's boxes). With
random weights the stop rules are switched off (:data:`NEVER_STOP`) so that the work is the same. Per object count it prints the encoder's time per frame, the tracker's time per frame and
what it adds over the encoder (decoder call, mask upscaling, prompts, rules), the decoder's share of
that, and ``segment`` with each frame's boxes on an empty cache. Target (issue #17): with 10 objects
the tracker adds no more than 20% over the encoder time per frame; "decoder %" is the part of that
which is SAM's mask decoder itself (its cost grows with the objects, batched or not), "own %" the
rest (prompts, upscaling the chosen masks, the stop rules). A third row runs 10 objects with
lean options (``multimask=False``: one candidate mask per object;
``min_similarity=None``: no pooled-feature check). The machine load (1-minute
average) is printed before and after: the numbers are only as quiet as the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

SIZE = 512
LEAN = {"multimask": False, "min_similarity": None}  # one candidate mask, no appearance rule
# random weights give random masks: rules that never end a track keep every object decoded on every
# frame, so that the compute is what a trained model's tracking costs
NEVER_STOP = {"score_threshold": -1.0, "min_overlap": 0.0, "patience": 10**6, "edge_fraction": 0.0,
              "max_area_change": math.inf, "min_area": 0,
              "min_similarity": -2.0}


def scene(n_objects: int, n_frames: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(T, 512, 512) uint8 frames of ``n_objects`` disks (radius 24) on a 4 x 3 grid drifting about
    1 px / frame, per frame the (N, 4) pixel-edge boxes of the disks, and their (N, H, W) masks on
    frame 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    frames, boxes, first = [], [], []
    centres = [(80 + 170 * (k // 4), 70 + 125 * (k % 4)) for k in range(n_objects)]
    velocity = rng.uniform(-1, 1, (n_objects, 2))
    for t in range(n_frames):
        signal = np.zeros((SIZE, SIZE), np.float32)
        frame_boxes = []
        for (cy, cx), (vy, vx) in zip(centres, velocity):
            y, x = cy + vy * t, cx + vx * t
            disk = (yy - y) ** 2 + (xx - x) ** 2 <= 24**2
            signal += disk
            if t == 0:
                first.append(disk)
            frame_boxes.append([x - 24, y - 24, x + 25, y + 25])
        image = 30 + 180 * ndimage.gaussian_filter(signal, 1.0) + rng.normal(0, 6, signal.shape)
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
        boxes.append(np.array(frame_boxes))
    return np.stack(frames), boxes, np.stack(first)


def timed_runs(session) -> list[float]:
    """Seconds of every run of the ONNX Runtime ``session`` from now on (it is wrapped in place)."""
    spent: list[float] = []
    run = session.run

    def timed(*args):
        start = time.perf_counter()
        out = run(*args)
        spent.append(time.perf_counter() - start)
        return out

    session.run = timed
    return spent


def bench(predictor, n_objects: int, n_frames: int, repeats: int, **options) -> dict:
    """Encoder and decoder times are taken inside the tracking run itself (the session calls are
    timed), so "adds" and "own" are not skewed by load that differs between two separate passes."""
    import unisam

    frames, boxes, first = scene(n_objects, n_frames)
    given = unisam.Instances.from_masks(first, ids=np.arange(1, n_objects + 1))
    encoder, tracking, decoding, scratch = [], [], [], []
    encoder_runs, decoder_runs = timed_runs(predictor._encoder), timed_runs(predictor._decoder)
    for _ in range(repeats):
        predictor.cache.clear()
        encoder_runs.clear()
        decoder_runs.clear()
        start = time.perf_counter()
        result = unisam.track(frames, given, model=predictor, **options)
        tracking.append((time.perf_counter() - start) / n_frames)
        encoder.append(sum(encoder_runs) / n_frames)
        decoding.append(sum(decoder_runs) / n_frames)
        tracked = min(len(found) for found in result)
        start = time.perf_counter()
        for frame, frame_boxes in zip(frames, boxes):
            predictor.cache.clear()
            unisam.segment(frame, [unisam.Prompt(box=b) for b in frame_boxes], model=predictor)
        scratch.append((time.perf_counter() - start) / n_frames)
    enc, trk = statistics.median(encoder), statistics.median(tracking)
    return {
        "objects": n_objects,
        "options": options,
        "tracked_on_every_frame": tracked,
        "encoder_ms": enc * 1e3,
        "track_ms_per_frame": trk * 1e3,
        "tracker_adds_ms": (trk - enc) * 1e3,
        "tracker_adds_pct_of_encoder": 100 * (trk - enc) / enc,
        "decoder_ms_per_frame": statistics.median(decoding) * 1e3,
        "decoder_pct_of_encoder": 100 * statistics.median(decoding) / enc,
        # what the tracker adds besides the decoder call: prompts, upscaling, rules, bookkeeping
        "own_ms": (trk - enc - statistics.median(decoding)) * 1e3,
        "own_pct_of_encoder": 100 * (trk - enc - statistics.median(decoding)) / enc,
        "track_fps": 1 / trk,
        "segment_ms_per_frame": statistics.median(scratch) * 1e3,
        "segment_fps": 1 / statistics.median(scratch),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unisam-tiny", help="registered name or export directory")
    parser.add_argument("--random-edgesam", action="store_true", help="export EdgeSAM with random weights (torch)")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (medians)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    import unisam

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_edgesam:
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_segment import export_random

            from unisam.registry import EDGE_SAM

            export_random(EDGE_SAM, Path(tmp) / "edgesam")
            predictor, name = unisam.load_model(weights=Path(tmp) / "edgesam", threads=args.threads), "edgesam (random)"
        elif Path(args.model).is_dir():
            predictor, name = unisam.load_model(weights=args.model, threads=args.threads), args.model
        else:
            predictor, name = unisam.load_model(args.model, threads=args.threads), args.model
        never = NEVER_STOP if args.random_edgesam else {}
        settings = [(1, never), (10, never), (10, {**never, **LEAN})]
        rows = [bench(predictor, n, args.frames, args.repeats, **options) for n, options in settings]
    load_after = os.getloadavg()[0]
    print(f"model {name} (input {predictor.spec.image_size}), {SIZE}x{SIZE} frames, {args.frames} frames x "
          f"{args.repeats} runs, {os.cpu_count()} CPUs, load average {load_before:.2f} before / {load_after:.2f} after")
    print(f"{'objects':>7} {'options':>7} {'encoder ms':>10} {'track ms':>9} {'adds ms':>8} {'adds %':>7} {'decoder ms':>10} "
          f"{'decoder %':>9} {'own ms':>7} {'own %':>6} {'track fps':>9} {'segment ms':>10} {'segment fps':>11}")
    for r in rows:
        print(f"{r['objects']:7d} {'lean' if 'multimask' in r['options'] else 'default':>7} {r['encoder_ms']:10.1f} {r['track_ms_per_frame']:9.1f} {r['tracker_adds_ms']:8.1f} "
              f"{r['tracker_adds_pct_of_encoder']:6.0f}% {r['decoder_ms_per_frame']:10.1f} {r['decoder_pct_of_encoder']:8.0f}% "
              f"{r['own_ms']:7.1f} {r['own_pct_of_encoder']:5.0f}% {r['track_fps']:9.1f} "
              f"{r['segment_ms_per_frame']:10.1f} {r['segment_fps']:11.1f}  (on every frame {r['tracked_on_every_frame']})")
    ten = rows[1]
    verdict = "met" if ten["tracker_adds_pct_of_encoder"] <= 20 else "NOT met"
    print(f"target (10 objects add <= 20% of the encoder time): {verdict} "
          f"({ten['tracker_adds_pct_of_encoder']:.0f}%: the decoder call {ten['decoder_pct_of_encoder']:.0f}%, "
          f"the tracker's own work {ten['own_pct_of_encoder']:.0f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": name, "load": [load_before, load_after], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
