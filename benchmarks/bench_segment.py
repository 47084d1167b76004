"""Speed and memory of the ONNX Runtime predictor: EdgeSAM vs SAM ViT-B, against the machine's ceiling.

Run by hand on a quiet machine (needs the torch extra to build and export random-weight models):

    python benchmarks/bench_segment.py            # EdgeSAM and SAM ViT-B
    python benchmarks/bench_segment.py --skip-vit # EdgeSAM only (fast)

Prints one table: the float32 matmul throughput of numpy (2048x2048, the ceiling), then per model the
encoder's FLOPs, latency and fraction of the ceiling, the per-click latency (prompt -> full-resolution
mask, encoder already run) and the peak resident memory of a process that runs the model.
Targets (2-core machines): EdgeSAM encoder >= 60% of the ceiling and >= 15x faster than SAM ViT-B;
each click <= 40 ms; EdgeSAM inference peak memory <= 400 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def matmul_ceiling(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 GEMM throughput of numpy in GFLOP/s (2 n^3 flops per product)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def encoder_gflops(model, image_size: int) -> float:
    """FLOPs of one encoder forward (convolutions, matmuls, attention), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from unisam.models.fuse import fuse_for_inference

    encoder = fuse_for_inference(model.image_encoder).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9


def export_random(spec, out: Path, seed: int = 0):
    """A seeded random-weight model of ``spec`` exported to ONNX in ``out``; returns the torch model."""
    import torch

    from unisam.models import build_sam, export_onnx

    torch.manual_seed(seed)
    model = build_sam(spec).eval()
    export_onnx(model, out)
    return model


MEMORY_PROBE = """
import sys, numpy as np, unisam
model = unisam.load_model(weights=sys.argv[1], threads={threads})
image = (np.random.default_rng(0).random(({h}, {w}, 3)) * 255).astype(np.uint8)
emb = model.embed(image)
for i in range(10):
    model.predict(emb, points=[[{w} * (i + 1) / 12, {h} / 2]], point_labels=[1], multimask=False)
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) / 1024)
"""


def peak_memory_mb(onnx_dir: Path, size: tuple[int, int], threads: int) -> float:
    """Peak RSS (MB) of a fresh process that loads the model, embeds one image and runs 10 clicks.

    Read from VmHWM: ``ru_maxrss`` would include this (torch-laden) parent's high-water mark, which
    Linux carries across fork + exec.
    """
    code = MEMORY_PROBE.format(h=size[0], w=size[1], threads=threads)
    out = subprocess.run([sys.executable, "-c", code, str(onnx_dir)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_model(name: str, spec, ceiling: float, work: Path, args) -> dict:
    import unisam

    out = work / name
    model = export_random(spec, out)
    gflops = encoder_gflops(model, spec.image_size)
    del model
    predictor = unisam.load_model(weights=out, threads=args.threads)
    h, w = args.image_size
    image = (np.random.default_rng(1).random((h, w, 3)) * 255).astype(np.uint8)
    from unisam.runtime.transforms import normalize_and_pad, resize_longest_side

    tensor = normalize_and_pad(resize_longest_side(image, spec.image_size), spec.image_size, spec.pixel_mean,
                               spec.pixel_std)
    encoder = predictor._encoder
    encoder.run(None, {"image": tensor})
    runs = args.vit_runs if spec.encoder == "vit" else args.runs
    enc_s = statistics.median(_timed(lambda: encoder.run(None, {"image": tensor})) for _ in range(runs))
    emb = predictor.embed(image)
    rng = np.random.default_rng(2)
    clicks = []
    for _ in range(args.clicks):
        pt = [[rng.uniform(0, w), rng.uniform(0, h)]]
        clicks.append(_timed(lambda: predictor.predict(emb, points=pt, point_labels=[1], multimask=False)))
    multi = [
        _timed(lambda: predictor.predict(emb, points=[[w / 2, h / 2]], point_labels=[1], multimask=True))
        for _ in range(args.clicks // 2)
    ]
    return {
        "model": name,
        "encoder_gflop": gflops,
        "encoder_ms": enc_s * 1e3,
        "encoder_fraction_of_ceiling": gflops / enc_s / ceiling,
        "click_ms": statistics.median(clicks[1:]) * 1e3,
        "click_multimask_ms": statistics.median(multi) * 1e3,
        "peak_rss_mb": peak_memory_mb(out, (h, w), args.threads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--runs", type=int, default=10, help="encoder runs (median) for EdgeSAM")
    parser.add_argument("--vit-runs", type=int, default=3, help="encoder runs (median) for SAM ViT-B")
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--image-size", type=int, nargs=2, default=(1024, 1024), metavar=("H", "W"))
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    from unisam.registry import EDGE_SAM, SAM_VIT_B

    ceiling = matmul_ceiling()
    print(f"numpy float32 matmul 2048x2048: {ceiling:.1f} GFLOP/s (the ceiling)")
    models = [("edgesam", EDGE_SAM)] + ([] if args.skip_vit else [("sam-vit-b", SAM_VIT_B)])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_model(name, spec, ceiling, Path(tmp), args) for name, spec in models]
    header = f"{'model':<10} {'GFLOP':>7} {'encoder ms':>11} {'% ceiling':>10} {'click ms':>9} {'3-mask ms':>10} {'peak MB':>8}"
    print(header)
    for r in rows:
        print(
            f"{r['model']:<10} {r['encoder_gflop']:7.1f} {r['encoder_ms']:11.1f} "
            f"{100 * r['encoder_fraction_of_ceiling']:9.1f}% {r['click_ms']:9.1f} {r['click_multimask_ms']:10.1f} "
            f"{r['peak_rss_mb']:8.0f}"
        )
    if len(rows) == 2:
        print(f"EdgeSAM encoder speed-up over SAM ViT-B: {rows[1]['encoder_ms'] / rows[0]['encoder_ms']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"ceiling_gflops": ceiling, "models": rows}, indent=2))


if __name__ == "__main__":
    main()
