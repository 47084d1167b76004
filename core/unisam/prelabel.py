"""Prelabel many images: one job = a source -> steps -> a sink, run in-process or on Ray Data.

- **Sources**: :class:`FolderSource` (image files under a folder, recursive), :class:`CocoSource`
  (the ``images`` of a COCO JSON, file names relative to a root) and :class:`SequenceSource` (the
  videos, multi-page TIFFs and folders of frames in a folder: one item per sequence).
- **Steps**: :class:`SegmentEverything` (options as :class:`EverythingParams`), :class:`Track`
  (automatic tracking of each sequence item, :func:`unisam.track`) and :class:`Label` (names from a
  vocabulary with a CLIP label model; on sequences per frame, then one name per track), applied in
  order to each item. A job is on images or, with a :class:`Track` first, on sequences.
- **Sinks**: :class:`CocoSink` (COCO RLE annotations: JSON-lines shards, each written atomically,
  merged into ``annotations.json`` at the end; sequences as COCO video: ``videos``, frame
  ``images``, ``tracks`` and ``track_id`` per annotation) and :class:`PngSink` (a label PNG per image,
  a folder of track-id PNGs per sequence).

Resumable: the sink keeps ``manifest.jsonl`` in its output folder, one line per written batch with
each image's key (its relative path) and the sha256 of its file. A re-run skips images listed there
whose file is unchanged; a shard not listed (a crash between writing it and listing it) is removed
and its images done again, so no label is duplicated or dropped. Workers turn an image into the
sink's payload (RLE records or PNG bytes); only the driver writes files.

Engines: ``"local"`` (this process) and ``"ray"`` (``ray.data.from_items`` + ``map_batches`` with an
actor pool, one model per actor, ONNX Runtime threads = the actor's CPUs; a local cluster is started
unless ``address`` names one). Both give identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from .frames import IMAGE_SUFFIXES, TIFF_SUFFIXES, open_frames
from .images import load_image
from .instances import Instances
from .tracks import Tracks

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg")
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Item:
    """One image of a source: ``key`` its unique name (path relative to the root, COCO ``file_name``),
    ``path`` the file, ``image_id`` its COCO id."""

    key: str
    path: str
    image_id: int


class FolderSource:
    """Every image file (suffixes :data:`IMAGE_SUFFIXES`) under ``root``, recursively, sorted by
    relative path; ids 1..N in that order."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist or is not a folder")

    def items(self) -> list[Item]:
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        keys = [p.relative_to(self.root).as_posix() for p in files]
        return [Item(k, str(p), i) for i, (k, p) in enumerate(zip(keys, files), start=1)]


class CocoSource:
    """The ``images`` of a COCO JSON file (``id``, ``file_name`` relative to ``root``, default the
    JSON's folder), in the file's order."""

    def __init__(self, path: str | Path, root: str | Path | None = None) -> None:
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent
        try:
            data = json.loads(self.path.read_text())
            self.images = [(int(im["id"]), str(im["file_name"])) for im in data["images"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path} is not a readable COCO JSON with images (id, file_name): {exc}") from None

    def items(self) -> list[Item]:
        return [Item(name, str(self.root / name), image_id) for image_id, name in self.images]


class SequenceSource:
    """Every sequence directly under ``root``, sorted by name, ids 1..N: a video file (suffixes
    :data:`VIDEO_SUFFIXES`), a multi-page TIFF, or a folder holding image files (its frames, in name
    order); an item's key is its name."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"sequence folder {self.root} does not exist or is not a folder")

    def items(self) -> list[Item]:
        def is_sequence(p: Path) -> bool:
            if p.is_dir():
                return any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())
            return p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES + TIFF_SUFFIXES

        found = sorted(p for p in self.root.iterdir() if is_sequence(p))
        return [Item(p.name, str(p), i) for i, p in enumerate(found, start=1)]


class Source(Protocol):
    """Where images come from (a folder, a COCO JSON, or a host's dataset): ``items()``."""

    def items(self) -> list[Item]: ...


class Sink(Protocol):
    """Where results go. Workers call ``encode`` (picklable, no I/O) with an image's ``Instances`` or
    a sequence's ``Tracks``; the driver calls ``open`` (the done items {key: sha256}), ``write`` per
    batch of ``shard_size`` results and ``close``."""

    format: str
    shard_size: int

    def encode(self, item: Item, instances: Instances | Tracks, categories: list[str]) -> bytes: ...
    def open(self, spec: dict, overwrite: bool) -> dict[str, str]: ...
    def write(self, batch: list[dict]) -> None: ...
    def close(self, items: list[Item], categories: list[str]) -> None: ...


# -- steps ----------------------------------------------------------------------------------------------

class Step(Protocol):
    """A step: ``load(threads)`` (once per worker) gives the function ``(image, instances) -> Instances``
    (``instances`` None for the first step); a step with ``sequences = True`` (:class:`Track`, first
    only) gives ``(frames, None) -> Tracks`` and makes the job's items sequences."""

    def load(self, threads: int | None): ...


@dataclass(frozen=True)
class SegmentEverything:
    """Automatic masks (:func:`unisam.segment_everything`): ``model`` a registered name or export
    directory, ``weights`` as :func:`unisam.load_model`, ``options`` :class:`EverythingParams` by name."""

    model: str | None = None
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tiles: bool = False

    def check(self) -> None:
        """Bad options raise a ``ValueError`` here, before any worker starts."""
        from .api import everything_defaults

        everything_defaults(None if self.weights else self.model).replace(**self.options)

    def load(self, threads: int | None):
        from .api import segment_everything
        from .hub import load_model

        predictor = load_model(self.model, weights=self.weights, threads=threads)
        return lambda image, _: segment_everything(image, model=predictor, tiles=self.tiles or None, **self.options)


@dataclass(frozen=True)
class Track:
    """Objects followed through each sequence (:func:`unisam.track`, automatic mode): segment
    everything on every frame, then link the frames. ``options``: :class:`EverythingParams` fields and
    the linking options :data:`unisam.track.LINK_OPTIONS` (method, min_iou, ...) by name; ``model``
    and ``weights`` as for :class:`SegmentEverything`."""

    model: str | None = None
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sequences: ClassVar[bool] = True

    def check(self) -> None:
        from .track import check_automatic_options

        check_automatic_options(self.options, None if self.weights else self.model)

    def load(self, threads: int | None):
        from .hub import load_model
        from .track import track

        predictor = load_model(self.model, weights=self.weights, threads=threads)
        return lambda frames, _: track(frames, model=predictor, **self.options)


@dataclass(frozen=True)
class Label:
    """Names for the masks (:func:`unisam.label`) from ``vocabulary`` with the CLIP ``model``
    (``"arch/pretrained"`` or an export directory; None: the cached default)."""

    vocabulary: tuple[str, ...]
    model: str | None = None
    mode: str = "ensemble"
    unknown: float = 0.0

    def check(self) -> None:
        from .label import Vocabulary

        Vocabulary.parse(list(self.vocabulary))

    def load(self, threads: int | None):
        from .hub import get_label_model
        from .label import label

        clip = get_label_model(self.model)
        return lambda image, found: label(image, found, list(self.vocabulary), model=clip, mode=self.mode, unknown=self.unknown)


# -- sinks ----------------------------------------------------------------------------------------------

def encode_coco(instances: Instances | Tracks, categories: list[str]) -> bytes:
    """One image's instances as JSON: height, width and COCO annotations (RLE ``segmentation``, ``bbox``
    x, y, w, h in pixels, ``area``, ``score`` the predicted IoU, ``category_id`` 1..K from ``categories``,
    K + 1 for an unnamed mask when labeled, ``label_score`` when labeled). A sequence's ``Tracks``:
    height, width, ``frames`` (each frame's annotations, with ``track_id`` = the track's id) and
    ``lineage`` {parent id: [child ids]}."""
    if isinstance(instances, Tracks):
        height, width = instances[0].image_size
        frames = [_annotations(frame, categories) for frame in instances]
        lineage = {str(parent): children for parent, children in instances.lineage.items()}
        return json.dumps({"height": height, "width": width, "frames": frames, "lineage": lineage}).encode()
    height, width = instances.image_size
    return json.dumps({"height": height, "width": width, "annotations": _annotations(instances, categories)}).encode()


def _annotations(instances: Instances, categories: list[str]) -> list[dict]:
    ids = {name: i for i, name in enumerate(categories, start=1)}
    labels = instances.labels or [None] * len(instances)
    anns = []
    for i, rle in enumerate(instances.to_rle()):
        x1, y1, x2, y2 = (float(v) for v in instances.boxes[i])
        ann = {"segmentation": rle, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(instances.masks[i].sum()),
               "score": float(instances.scores[i]), "category_id": ids.get(labels[i] or "object", len(categories) + 1),
               "iscrowd": 0}
        if instances.label_scores is not None:
            ann["label_score"] = float(instances.label_scores[i])
        if instances.ids is not None:
            ann["track_id"] = int(instances.ids[i])
        anns.append(ann)
    return anns


class _ManifestSink(ABC):
    """Output folder + manifest of done images; subclasses say how a result is encoded and stored."""

    format = ""

    def __init__(self, out: str | Path, shard_size: int = 64) -> None:
        self.out = Path(out)
        if not self.out.parent.is_dir():
            raise ValueError(f"cannot write into {self.out}: the folder {self.out.parent} does not exist")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"cannot write into {self.out}: it is a file, give a folder")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.shard_size = shard_size

    @abstractmethod
    def encode(self, item: Item, instances: Instances | Tracks, categories: list[str]) -> bytes:
        """One item's result as the payload :meth:`_store` writes."""

    @abstractmethod
    def _store(self, batch: list[dict], number: int) -> str | None:
        """Write ``batch`` (results with payloads) durably; return the shard's name, if any."""

    def open(self, spec: dict, overwrite: bool) -> dict[str, str]:
        """Create the folder, check it holds this job (or nothing), and return the done images
        {key: sha256}. Shards not in the manifest are removed (their images are done again)."""
        self.out.mkdir(exist_ok=True)
        job_file = self.out / "job.json"
        if job_file.exists() and json.loads(job_file.read_text()) != spec:
            if not overwrite:
                raise ValueError(f"{self.out} holds a prelabel run with other options; pass --overwrite or use another folder")
            (self.out / MANIFEST).unlink(missing_ok=True)
        _write_atomic(job_file, json.dumps(spec, indent=1).encode())
        done: dict[str, str] = {}
        self.shards: list[str] = []
        manifest, kept = self.out / MANIFEST, []
        for line in manifest.read_text().splitlines() if manifest.exists() else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut off by a crash: its batch is done again
            kept.append(line)
            done.update(entry["images"])
            if entry["shard"]:
                self.shards.append(entry["shard"])
        if manifest.exists():
            _write_atomic(manifest, "".join(f"{line}\n" for line in kept).encode())
        for stray in {p.name for p in self.out.glob("shards/*.jsonl")} - set(self.shards):
            (self.out / "shards" / stray).unlink()
        self.count = len(kept)
        return done

    def write(self, batch: list[dict]) -> None:
        """Store one batch of results, then list its images in the manifest (flushed and synced)."""
        shard = self._store(batch, self.count)
        self.count += 1
        if shard:
            self.shards.append(shard)
        line = json.dumps({"shard": shard, "images": {r["key"]: r["sha256"] for r in batch}})
        with open(self.out / MANIFEST, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self, items: list[Item], categories: list[str]) -> None:
        """Finish the output once every batch is written."""


class CocoSink(_ManifestSink):
    """COCO RLE annotations in ``out``: ``shards/part-NNNNN.jsonl`` (one line per item), merged into
    ``annotations.json`` (images in source order, annotation ids 1..M) at the end. Sequences as COCO
    video (the TAO / YouTube-VIS layout): ``videos`` (id = the item's id, ``length`` in frames), one
    ``image`` per frame (``video_id``, ``frame_index``), ``tracks`` (ids 1..K over the whole file,
    ``local_id`` = the id within its sequence, ``parent_id`` for a divided cell's children) and
    ``track_id`` on each annotation."""

    format = "coco"

    def encode(self, item: Item, instances: Instances, categories: list[str]) -> bytes:
        return encode_coco(instances, categories)

    def _store(self, batch: list[dict], number: int) -> str:
        name = f"part-{number:05d}.jsonl"
        lines = [json.dumps({"key": r["key"], "image_id": r["image_id"], **json.loads(r["payload"])}) for r in batch]
        (self.out / "shards").mkdir(exist_ok=True)
        _write_atomic(self.out / "shards" / name, ("\n".join(lines) + "\n").encode())
        return name

    def close(self, items: list[Item], categories: list[str]) -> None:
        records: dict[str, dict] = {}
        for shard in self.shards:  # a later record of an image (its file changed) replaces an earlier one
            for line in (self.out / "shards" / shard).read_text().splitlines():
                record = json.loads(line)
                records[record["key"]] = record
        images, annotations, videos, tracks = [], [], [], []
        for item in items:
            record = records.get(item.key)
            if record is None:
                continue  # failed: in the report
            size = {"height": record["height"], "width": record["width"]}
            if "frames" not in record:
                images.append({"id": item.image_id, "file_name": item.key, **size})
                for ann in record["annotations"]:
                    annotations.append({"id": len(annotations) + 1, "image_id": item.image_id, **ann})
                continue
            videos.append({"id": item.image_id, "file_name": item.key, **size, "length": len(record["frames"])})
            track_of: dict[int, dict] = {}  # id in this sequence -> its entry in tracks
            for t, anns in enumerate(record["frames"]):
                images.append({"id": len(images) + 1, "video_id": item.image_id, "frame_index": t, "file_name": item.key, **size})
                for ann in anns:
                    local = ann["track_id"]
                    if local not in track_of:
                        track_of[local] = {"id": len(tracks) + 1, "video_id": item.image_id,
                                           "category_id": ann["category_id"], "local_id": local}
                        tracks.append(track_of[local])
                    annotations.append({"id": len(annotations) + 1, "image_id": images[-1]["id"], "video_id": item.image_id,
                                        **ann, "track_id": track_of[local]["id"]})
            for parent, children in record["lineage"].items():
                for child in children:
                    if int(parent) in track_of and child in track_of:
                        track_of[child]["parent_id"] = track_of[int(parent)]["id"]
        names = [*categories, "unknown"] if any(a["category_id"] > len(categories) for a in annotations) else categories
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": i, "name": n} for i, n in enumerate(names, start=1)]}
        if videos:
            coco.update(videos=videos, tracks=tracks)
        _write_atomic(self.out / "annotations.json", json.dumps(coco).encode())


class PngSink(_ManifestSink):
    """A label image per source image, ``out/labels/<key>.png`` (0 = background, instance i = i + 1;
    8-bit, or 16-bit above 255 instances). A sequence: ``out/labels/<key>/NNNNN.png``, one per frame,
    each pixel its track's id, and ``lineage.json`` ({parent id: [child ids]}) when cells divided."""

    format = "png"

    def encode(self, item: Item, instances: Instances | Tracks, categories: list[str]) -> bytes:
        if not isinstance(instances, Tracks):
            return _png(instances.to_label_image())
        buffer = io.BytesIO()  # a sequence's files travel as one zip archive
        with zipfile.ZipFile(buffer, "w") as archive:
            for t, frame in enumerate(instances):
                archive.writestr(f"{t:05d}.png", _png(frame.to_label_image()))
            if instances.lineage:
                archive.writestr("lineage.json", json.dumps(instances.lineage))
        return buffer.getvalue()

    def _store(self, batch: list[dict], number: int) -> None:
        for r in batch:
            if r["payload"][:4] != b"PK\x03\x04":  # one PNG, not a sequence's zip archive
                path = self.out / "labels" / f"{r['key']}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(path, r["payload"])
                continue
            folder = self.out / "labels" / r["key"]
            folder.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(io.BytesIO(r["payload"])) as archive:
                names = archive.namelist()
                for name in names:
                    _write_atomic(folder / name, archive.read(name))
            for stale in {p.name for p in folder.iterdir()} - set(names):  # from a longer earlier version
                (folder / stale).unlink()
        return None


def _png(labels: np.ndarray) -> bytes:
    """``(H, W)`` integer labels as PNG bytes: 8-bit, or 16-bit above 255."""
    if labels.max(initial=0) > 65535:
        raise ValueError(f"label {int(labels.max())} does not fit a 16-bit PNG (at most 65535)")
    buffer = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


# -- the job ----------------------------------------------------------------------------------------------

@dataclass
class Report:
    """What a run did: ``images`` (items: images or sequences, as ``unit`` says) in the source,
    ``skipped`` (done before), ``processed`` now, ``instances`` found now (on every frame of a
    sequence), ``seconds`` of processing, ``failures`` as (key, one-line reason)."""

    images: int
    skipped: int
    processed: int
    instances: int
    seconds: float
    failures: list[tuple[str, str]]
    unit: str = "image"

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [f"{self.processed} {self.unit}s in {self.seconds:.1f} s ({self.images_per_s:.2f} {self.unit}s/s), "
                 f"{self.instances} instances; {self.skipped} already done, {len(self.failures)} failed, "
                 f"{self.images} in the source"]
        lines += [f"  failed: {key}: {reason}" for key, reason in self.failures]
        return "\n".join(lines)


class Worker:
    """Loads the job's steps once (``threads`` ONNX Runtime intra-op threads) and turns items into
    result dicts: key, image_id, sha256, count, payload (the sink's bytes), error (one line or "").
    On sequences the first step gives the ``Tracks`` and each later one runs on every frame."""

    def __init__(self, steps: Sequence[Step], sink: Sink, categories: list[str], threads: int | None) -> None:
        self.functions = [step.load(threads) for step in steps]
        self.sequences = _on_sequences(steps)
        self.sink, self.categories = sink, categories

    def __call__(self, item: Item) -> dict:
        result = {"key": item.key, "image_id": item.image_id, "sha256": "", "count": 0, "payload": b"", "error": ""}
        try:
            result["sha256"] = _sha256(item.path)
            if self.sequences:
                found = self._track(item)
                result["count"] = sum(len(frame) for frame in found)
            else:
                image = load_image(item.path)  # its errors name the file
                found = None
                for function in self.functions:
                    found = function(image, found)
                result["count"] = len(found)
            result["payload"] = self.sink.encode(item, found, self.categories)
        except (OSError, ValueError) as exc:
            result["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return result

    def _track(self, item: Item) -> Tracks:
        with open_frames(item.path) as frames:
            tracks = self.functions[0](frames, None)
            for function in self.functions[1:]:
                tracks = Tracks([function(frames[t], found) for t, found in enumerate(tracks)], tracks.lineage)
        return tracks.vote_labels()


def _on_sequences(steps: Sequence[Step]) -> bool:
    """Whether a job's items are sequences (its first step tracks); a tracking step elsewhere is a
    ``ValueError``."""
    tracking = [bool(getattr(step, "sequences", False)) for step in steps]
    if any(tracking[1:]):
        raise ValueError("a tracking step must be the job's first step (it reads the sequence)")
    return bool(tracking and tracking[0])


class _RayWorker:
    """The Ray actor: one :class:`Worker` per actor, fed batches of item rows."""

    def __init__(self, steps, sink, categories, threads: int) -> None:
        self.worker = Worker(steps, sink, categories, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.worker(Item(str(k), str(p), int(i))) for k, p, i in zip(batch["key"], batch["path"], batch["image_id"])]
        return {name: np.array([r[name] for r in rows], dtype=object) for name in rows[0]}


@dataclass
class Job:
    """``source`` -> ``steps`` (in order) -> ``sink``."""

    source: Source
    steps: list[Step]
    sink: Sink

    def categories(self) -> list[str]:
        named = [s for s in self.steps if isinstance(s, Label)]
        return list(named[-1].vocabulary) if named else ["object"]

    def spec(self) -> dict:
        """What must match for a run to resume in the same folder."""
        return {"steps": [{"step": type(s).__name__, **asdict(s)} for s in self.steps], "format": self.sink.format}

    def run(self, engine: str = "local", *, workers: int = 1, address: str | None = None,
            num_cpus: int | None = None, overwrite: bool = False, progress: bool = True) -> Report:
        """Process every image not done yet and finish the sink. ``engine`` "local" or "ray";
        ``workers`` Ray actors (each with ``num_cpus / workers`` CPUs; ``num_cpus`` default: the
        machine's); ``address``: join this Ray cluster instead of starting one."""
        if engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if engine == "local" and (workers > 1 or address is not None):
            raise ValueError("workers and address are options of the ray engine; the local engine runs in this process")
        for step in self.steps:
            step.check()
        unit = "sequence" if _on_sequences(self.steps) else "image"
        items = self.source.items()
        done = self.sink.open(self.spec(), overwrite)
        todo = [it for it in items if it.key not in done or _sha256(it.path) != done[it.key]]
        start = time.perf_counter()
        if engine == "local":
            worker = Worker(self.steps, self.sink, self.categories(), num_cpus)
            results: Iterable[dict] = map(worker, todo)
        else:
            results = _ray_results(self, todo, workers, address, num_cpus)
        failures, batch, instances = [], [], 0
        for result in tqdm(results, total=len(todo), desc="prelabel", unit=unit, disable=not progress):
            if result["error"]:
                failures.append((result["key"], result["error"]))
                continue
            instances += result["count"]
            batch.append(result)
            if len(batch) >= self.sink.shard_size:
                self.sink.write(batch)
                batch = []
        if batch:
            self.sink.write(batch)
        seconds = time.perf_counter() - start
        self.sink.close(items, self.categories())
        failures.sort()
        return Report(len(items), len(items) - len(todo), len(todo) - len(failures), instances, seconds, failures, unit)


def _ray_results(job: Job, todo: list[Item], workers: int, address: str | None, num_cpus: int | None) -> Iterator[dict]:
    """Results from a Ray Data actor pool, streamed as they finish."""
    if not todo:
        return
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"the ray engine needs Ray Data: pip install '.[ray]' ({exc})") from None
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // workers)) if num_cpus is None else max(1, num_cpus // workers)
        data = ray.data.from_items([asdict(it) for it in todo], override_num_blocks=min(len(todo), 4 * workers))
        out = data.map_batches(
            _RayWorker, batch_size=1, batch_format="numpy", num_cpus=cpus,
            compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"steps": job.steps, "sink": job.sink, "categories": job.categories(), "threads": cpus},
        )
        for row in out.iter_rows():
            yield {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
    finally:
        if started:
            ray.shutdown()


def _sha256(path: str) -> str:
    """The sha256 of a file, or of a folder's files (their names and bytes, in name order); "" if unreadable."""
    try:
        root = Path(path)
        if not root.is_dir():
            return hashlib.sha256(root.read_bytes()).hexdigest()
        digest = hashlib.sha256()
        for file in sorted(p for p in root.iterdir() if p.is_file()):
            digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()
    except OSError:
        return ""


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, sync it, then rename it onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
