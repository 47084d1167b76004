"""Masks per second of unisam.label for 1, 10 and 100 masks in crop, dense and ensemble modes, and
unisam's ONNX Runtime path beside open_clip in torch on the same CPU, in one run.

    .venv-clip/bin/python benchmarks/label_speed.py                    # convnext_base_w (the default)
    .venv-clip/bin/python benchmarks/label_speed.py --arch ViT-B-32 --repeats 3
    .venv-clip/bin/python benchmarks/label_speed.py --modes crop --threads 1 --profile   # where crop time goes

Runs in the CLIP virtualenv (.ci/setup-clip.sh: torch 2.14 + open_clip + unisam). The model has
seeded random weights (no pretrained weights can be downloaded here; the compute is the same). The
image is a 512x512 photo-like picture with disks as masks. For each mode and mask count: seconds per
``unisam.label`` call (the vocabulary's text embeddings already cached, as in a labeling session),
masks per second; then the same image work in torch through open_clip's own modules (crops:
open_clip's preprocess + ``encode_image``; dense: the tower's features + pooling + head), with
torch's threads set to the same count as onnxruntime's. The two engines' repeats alternate and each
reports its best repeat, so on a shared machine both see the same load and the least disturbed run
counts. Targets (issue #16): ORT >= 1.5x faster than torch; dense with 100 masks >= 10x faster than crop.

``--profile`` first shows where crop-mode time goes: for one batch of crops, the seconds in cropping,
in preprocessing and in the ONNX Runtime session, the session's time per operator type (its own
profiler), and the ORT/torch ceiling if everything but the matrix products (MatMul, Gemm) took no time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import open_clip
import torch
from PIL import Image

import unisam
from unisam.models.clip import build_open_clip, dense_parts, export_clip
from unisam.runtime.clip import BATCH, ClipModel
from unisam.runtime.session import default_threads, session_options

VOCAB = ["cat", "dog", "car", "tree", "person", "bicycle", "cup", "chair", "book", "phone"]


def scene(n: int, rng: np.random.Generator) -> tuple[np.ndarray, unisam.Instances]:
    small = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((512, 512), Image.Resampling.BICUBIC))
    yy, xx = np.mgrid[:512, :512]
    masks = np.zeros((n, 512, 512), bool)
    for m in masks:
        cy, cx, r = rng.integers(40, 472), rng.integers(40, 472), rng.integers(8, 40)
        m[:] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return image, unisam.Instances.from_masks(masks)


def timed(ours, theirs, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of ``ours()`` and ``theirs()``, run alternately after one warm-up each."""
    times: tuple[list[float], list[float]] = ([], [])
    for fn in (ours, theirs):
        fn()  # warm-up (session buffers, caches)
    for _ in range(repeats):
        for fn, out in zip((ours, theirs), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def profile_crops(clip: ClipModel, model, image: np.ndarray, masks: np.ndarray, repeats: int, threads: int) -> None:
    """Print where one batch of crop-mode work goes (see the module docstring)."""
    start = time.perf_counter()
    crops = clip.mask_crops(image, masks[:BATCH])
    cropping = time.perf_counter() - start
    start = time.perf_counter()
    batch = np.stack([clip.preprocess(c) for c in crops])
    preprocessing = time.perf_counter() - start
    graph = "image.onnx" if clip._image is not None else "dense.onnx"
    session = clip._image or clip._dense
    with torch.no_grad():
        ours, theirs = timed(lambda: session.run(None, {"image": batch}),
                             lambda: model.encode_image(torch.from_numpy(batch)), repeats)
    opts = session_options(threads, arena=False)  # as ClipModel's sessions
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        profiled = ort.InferenceSession(str(clip.directory / graph), opts, providers=["CPUExecutionProvider"])
        for _ in range(2):  # a warm-up, then the run whose operators count
            profiled.run(None, {"image": batch})
        events = json.loads(Path(profiled.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    gemm = (per_op["MatMul"] + per_op["Gemm"]) / total * ours
    print(f"one batch of {len(crops)} crops ({graph}): cropping {cropping:.3f} s, preprocessing {preprocessing:.3f} s, "
          f"ORT session {ours:.3f} s, torch encode_image {theirs:.3f} s (best of {repeats})")
    print("ORT time per operator type: " + ", ".join(f"{op} {t / total:.1%}" for op, t in per_op.most_common(6)))
    print(f"matrix products (MatMul, Gemm) alone: {gemm:.3f} s, so ORT could be at most {theirs / gemm:.2f}x "
          f"faster than torch with this engine's matrix products ({theirs / ours:.2f}x now)\n")


def torch_crop(model, preprocess, clip: ClipModel, image, masks) -> None:
    crops = clip.mask_crops(image, masks)  # the same crops; what differs is the engine
    with torch.no_grad():
        for i in range(0, len(crops), BATCH):  # the batch size unisam uses
            batch = torch.stack([preprocess(Image.fromarray(c)) for c in crops[i : i + BATCH]])
            model.encode_image(batch)


def torch_dense(dense, head, clip: ClipModel, image, masks) -> None:
    features = clip.dense(image)  # only to get the same input geometry; the torch pass is timed below
    h, w = features.resized
    side = clip.dense_size
    ph, pw = (side, side) if clip.meta["dense"]["fixed_size"] else (-(-h // clip.stride) * clip.stride, -(-w // clip.stride) * clip.stride)
    canvas = torch.zeros(1, 3, ph, pw)
    with torch.no_grad():
        grid = dense(canvas)[0]
        c = grid.shape[0]
        cover = torch.from_numpy(masks[:, :: clip.stride, :: clip.stride][:, : grid.shape[1], : grid.shape[2]].astype(np.float32))
        pooled = cover.reshape(len(masks), -1) @ grid.reshape(c, -1).T / cover.reshape(len(masks), -1).sum(1, keepdim=True).clamp(min=1)
        head(pooled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="convnext_base_w")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--masks", default="1,10,100", help="mask counts, comma-separated")
    parser.add_argument("--modes", default="crop,dense,ensemble", help="modes, comma-separated")
    parser.add_argument("--profile", action="store_true", help="first show where crop-mode time goes")
    parser.add_argument("--threads", type=int, default=default_threads(), help="threads of both engines")
    args = parser.parse_args()
    counts = [int(n) for n in args.masks.split(",")]
    modes = args.modes.split(",")
    threads = args.threads
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_open_clip(args.arch)
    _, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=None)
    dense, head, _ = dense_parts(model)
    with tempfile.TemporaryDirectory() as tmp:
        export_clip(model, args.arch, Path(tmp) / "model")
        clip = ClipModel(Path(tmp) / "model", threads=threads, text_cache=None)
        clip.class_embeddings([(n,) for n in VOCAB], unisam.LABEL_TEMPLATES)
        load = os.getloadavg()[0]
        print(f"{args.arch} (random weights), 512x512 image, {threads} threads, load {load:.2f}\n")
        if args.profile:
            image, instances = scene(BATCH, np.random.default_rng(1))
            profile_crops(clip, model, image, instances.masks, args.repeats, threads)
        print(f"{'masks':>5} {'mode':>9} {'unisam s':>9} {'masks/s':>8} {'torch s':>8} {'ORT x':>6}")
        rng = np.random.default_rng(0)
        results = {}
        for n in counts:
            image, instances = scene(n, rng)
            for mode in modes:
                ours_f = lambda: unisam.label(image, instances, VOCAB, model=clip, mode=mode)
                crop_t = lambda: torch_crop(model, preprocess, clip, image, instances.masks)
                dense_t = lambda: torch_dense(dense, head, clip, image, instances.masks)
                theirs_f = {"crop": crop_t, "dense": dense_t, "ensemble": lambda: (crop_t(), dense_t())}[mode]
                ours, theirs = timed(ours_f, theirs_f, args.repeats)
                results[(n, mode)] = ours
                print(f"{n:>5} {mode:>9} {ours:>9.3f} {n / ours:>8.1f} {theirs:>8.3f} {theirs / ours:>6.2f}")
        if {(100, "crop"), (100, "dense")} <= results.keys():
            print(f"\ndense vs crop with 100 masks: {results[(100, 'crop')] / results[(100, 'dense')]:.1f}x faster")
        print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
