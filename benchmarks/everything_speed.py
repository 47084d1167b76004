"""Segment-everything time beside SAM ViT-B's automatic mask generator, and peak memory of `unisam segment`.

Both in one run:

- The same image (scikit-image's ``coins``, 303x384) through ``unisam.segment_everything`` (the model's
  defaults: a 32x32 grid, as SAM's generator; and ``object_size=45`` with the dense thresholds of
  ``benchmarks/real_images.py``) and through ``segment_anything``'s ``SamAutomaticMaskGenerator`` with a
  ViT-B of random weights (the official code, on PyTorch; random weights take the same time: every
  grid point is decoded and upscaled before any mask is filtered). Seconds of one call after a warm-up
  call on another image, so neither side's first-call costs count (encoder caches are cleared).
- Peak resident memory (``ru_maxrss`` of the child process) of ``unisam segment examples/nuclei.png
  --point 334,303 --out ...``, the README's first command, in a fresh process.

    pip install scikit-image && python benchmarks/everything_speed.py --sam-python <python with torch,
        torchvision and segment-anything>
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import unisam

ROOT = Path(__file__).resolve().parents[1]
DENSE = {"object_size": 45, "pred_iou_thresh": 0.35, "stability_score_thresh": 0.85, "mask_nms_thresh": 0.3}


def unisam_seconds(image: np.ndarray, warm: np.ndarray, model: unisam.Predictor, **options) -> tuple[float, int]:
    """(seconds, masks) of one segment_everything call, the encoder's cache cleared first."""
    unisam.segment_everything(warm, model=model, **options)
    model.cache.clear()
    start = time.perf_counter()
    found = unisam.segment_everything(image, model=model, **options)
    return time.perf_counter() - start, len(found)


def sam_seconds(image: np.ndarray, warm: np.ndarray, threads: int, python: str) -> tuple[float, int]:
    """(seconds, masks) of SamAutomaticMaskGenerator.generate with a random-weight ViT-B on the CPU, run by
    ``python`` (an interpreter with torch, torchvision and segment_anything) in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "image.npy", image)
        np.save(Path(tmp) / "warm.npy", warm)
        done = subprocess.run([python, __file__, "--sam-only", tmp, "--threads", str(threads)],
                              check=True, capture_output=True, text=True)
    seconds, masks = done.stdout.split()[-2:]
    return float(seconds), int(masks)


def _sam_only(directory: Path, threads: int) -> None:
    """The SAM side of :func:`sam_seconds`: prints seconds and the number of masks."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    generator = SamAutomaticMaskGenerator(sam_model_registry["vit_b"]().eval())
    with torch.inference_mode():
        generator.generate(np.load(directory / "warm.npy"))
        start = time.perf_counter()
        masks = generator.generate(np.load(directory / "image.npy"))
    print(time.perf_counter() - start, len(masks))


def cli_peak_rss_mb() -> float:
    """Peak RSS (MB) of the README's first command in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "unisam.cli", "segment", str(ROOT / "examples" / "nuclei.png"),
                   "--point", "334,303", "--out", str(Path(tmp) / "mask.png")]
        subprocess.run(command, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--sam-python", default=sys.executable,
                        help="a Python with torch, torchvision and segment_anything, for SAM's generator")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sam-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sam_only is not None:
        return _sam_only(args.sam_only, args.threads)
    from skimage import data

    rss = cli_peak_rss_mb()  # first, while this process has no children yet
    image, warm = unisam.images.load_image(data.coins()), unisam.images.load_image(data.camera())
    model = unisam.load_model(args.model, threads=args.threads)
    threads = args.threads or unisam.runtime.session.default_threads()
    rows = [
        (f"unisam {model.name}, defaults (32x32 grid)", *unisam_seconds(image, warm, model)),
        (f"unisam {model.name}, {DENSE}", *unisam_seconds(image, warm, model, **DENSE)),
        ("SAM ViT-B automatic mask generator (random weights, PyTorch)",
         *sam_seconds(image, warm, threads, args.sam_python)),
    ]
    sam = rows[-1][1]
    print(f"segment everything on coins ({image.shape[1]}x{image.shape[0]}), {threads} threads:")
    print("| pipeline | seconds | masks | SAM ViT-B / this |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds, n in rows:
        print(f"| {name} | {seconds:.2f} | {n} | {sam / seconds:.1f}x |")
    print(f"peak RSS of `unisam segment examples/nuclei.png --point 334,303 --out mask.png`: {rss:.0f} MB")


if __name__ == "__main__":
    main()
