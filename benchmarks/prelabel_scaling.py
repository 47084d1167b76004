"""Prelabel throughput: the local engine and Ray at 1 and 2 workers, side by side on the same images.

Writes ``--synthetic`` 512x512 scenes from the synthetic generator plus scikit-image's bundled real
photographs (coins, astronaut, coffee, chelsea, camera, rocket; ``pip install scikit-image``) into a
folder, then runs the same job (segment everything, COCO RLE sink) with each engine into its own output
folder and prints one table: images/s, seconds per image, CPU-seconds per image (wall x CPUs used) and
the bytes moved per image (the image file a worker reads + the result it sends to the driver). The
Ray cluster is started once, before the timed runs (``ray.init(num_cpus=--cpus)``); each Ray run
includes starting its actors and loading their models, as a real job does.

    pip install -e ".[ray]" scikit-image
    python benchmarks/prelabel_scaling.py --synthetic 40 --points-per-side 16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from unisam import prelabel
from unisam.data.synthetic import generate_sample

REAL = ("coins", "astronaut", "coffee", "chelsea", "camera", "rocket")


def write_images(folder: Path, synthetic: int, seed: int) -> int:
    """The benchmark's images as PNG files in ``folder``; returns how many."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for i in range(synthetic):
        Image.fromarray(generate_sample(rng, (512, 512)).image).save(folder / f"synthetic{i:03d}.png")
    for name in REAL:
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
    return synthetic + len(REAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=40, help="synthetic 512x512 images (plus 6 real ones)")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    root = Path(tempfile.mkdtemp(prefix="unisam-prelabel-bench-"))
    images = root / "images"
    images.mkdir()
    n = write_images(images, args.synthetic, args.seed)
    file_bytes = sum(p.stat().st_size for p in images.iterdir()) / n
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    step = prelabel.SegmentEverything(args.model, options={"points_per_side": args.points_per_side})
    runs = [("local", 1, args.cpus), ("ray", 1, args.cpus), ("ray", 2, args.cpus)]
    rows, outputs = [], []
    for engine, workers, cpus in runs:
        out = root / f"{engine}-{workers}"
        job = prelabel.Job(prelabel.FolderSource(images), [step], prelabel.CocoSink(out))
        start = time.perf_counter()
        report = job.run(engine, workers=workers, num_cpus=cpus, progress=False)
        wall = time.perf_counter() - start
        result_bytes = sum(p.stat().st_size for p in (out / "shards").glob("*.jsonl")) / n
        outputs.append(json.loads((out / "annotations.json").read_text()))
        rows.append((f"{engine} ({workers} worker{'s' if workers > 1 else ''}, {cpus // workers} threads each)",
                     report, wall, cpus, result_bytes))
    ray.shutdown()

    print(f"{n} images ({args.synthetic} synthetic 512x512 + {len(REAL)} scikit-image photos), "
          f"points_per_side {args.points_per_side}, {args.cpus} CPUs, {os.cpu_count()} on the machine")
    print("| engine | images/s | s per image | CPU-s per image | file bytes per image | result bytes per image | instances |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, report, wall, cpus, result_bytes in rows:
        per = wall / report.processed
        print(f"| {name} | {report.processed / wall:.2f} | {per:.3f} | {per * cpus:.3f} | {file_bytes / 1e3:.1f} kB "
              f"| {result_bytes / 1e3:.1f} kB | {report.instances} |")
    print("identical annotations.json from every engine:", all(o == outputs[0] for o in outputs))


if __name__ == "__main__":
    main()
