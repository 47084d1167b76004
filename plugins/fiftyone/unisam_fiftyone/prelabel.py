"""unisam's prelabel job (:mod:`unisam.prelabel`) on a FiftyOne dataset: the samples' images in, a
``Detections`` field (instance masks) out, on the local engine::

    from unisam import prelabel
    from unisam_fiftyone.prelabel import prelabel_dataset

    report = prelabel_dataset(dataset, "prelabels", points_per_side=16)

Several processes share one job by each taking one shard (:func:`shard_of`) of the same samples.
From the command line, ``unisam prelabel fiftyone:<dataset> --out <field>`` runs the same job
(:func:`prelabel_target`, registered as the ``fiftyone`` prelabel target of the ``unisam`` command).

Resumable: each written field holds the sha256 of the image it was made from (``unisam_sha256``); a
re-run skips samples whose field is there for an unchanged image. An existing field that unisam did
not write is never overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fiftyone as fo
import fiftyone.core.labels as fol

import unisam
from unisam import prelabel

from .zoo import to_detections

MARK = "unisam_sha256"


class DatasetSource:
    """The samples of a dataset or view, in their order: key = sample id, path = filepath."""

    def __init__(self, samples: fo.core.collections.SampleCollection) -> None:
        self.samples = samples

    def items(self) -> list[prelabel.Item]:
        ids, paths = self.samples.values("id"), self.samples.values("filepath")
        return [prelabel.Item(key, path, i) for i, (key, path) in enumerate(zip(ids, paths), start=1)]


class DetectionsSink:
    """Writes each image's instances into ``field`` of its sample (``fo.Detections``, masks cropped to
    their boxes, confidence = predicted IoU; when labeled, label = the class name, confidence = its
    probability, as :func:`unisam_fiftyone.zoo.to_detections` writes them)."""

    format = "fiftyone"

    def __init__(self, samples: fo.core.collections.SampleCollection, field: str, shard_size: int = 16,
                 on_write: Callable[[int], None] | None = None) -> None:
        """``on_write``: called with the number of samples written after each batch is saved."""
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.samples, self.field, self.shard_size, self.on_write = samples, field, shard_size, on_write

    def __getstate__(self) -> dict[str, Any]:  # workers only encode: they get no dataset handle
        return {"shard_size": self.shard_size, "field": self.field}

    def encode(self, item: prelabel.Item, instances: unisam.Instances, categories: list[str]) -> bytes:
        """The instances as JSON: RLE masks, scores, and the labels when named."""
        if not isinstance(instances, unisam.Instances):
            raise ValueError("a FiftyOne dataset is prelabelled image by image; track videos with the "
                             "'@unisam/unisam/track' operator")
        scores = None if instances.label_scores is None else instances.label_scores.tolist()
        return json.dumps({"size": instances.image_size, "rles": instances.to_rle(), "scores": instances.scores.tolist(),
                           "labels": instances.labels, "label_scores": scores, "label_topk": instances.label_topk}).encode()

    def open(self, spec: dict, overwrite: bool) -> dict[str, str]:
        if self.samples.has_field(self.field):
            found = self.samples.exists(self.field)
            marks = found.values(f"{self.field}.{MARK}")
            if overwrite:
                return {}
            if any(mark is None for mark in marks):
                raise ValueError(f"field {self.field!r} already holds labels unisam did not write; "
                                 "pass overwrite=True or choose another field")
            return dict(zip(found.values("id"), marks))
        return {}

    def write(self, batch: list[dict]) -> None:
        by_id = {r["key"]: r for r in batch}
        for sample in self.samples.select(list(by_id)).iter_samples(autosave=True):
            result = by_id[sample.id]
            record = json.loads(result["payload"])
            instances = unisam.Instances.from_rle(
                record["rles"], record["scores"], image_size=tuple(record["size"]), labels=record["labels"],
                label_scores=record["label_scores"], label_topk=record["label_topk"],
            )
            detections: fol.Detections = to_detections(instances)
            detections[MARK] = result["sha256"]
            sample[self.field] = detections
        if self.on_write is not None:
            self.on_write(len(batch))

    def close(self, items: list[prelabel.Item], categories: list[str]) -> None:
        """Nothing to merge: every batch is in the dataset once written."""


def prelabel_dataset(
    samples: fo.core.collections.SampleCollection,
    field: str,
    *,
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
    model: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_write: Callable[[int], None] | None = None,
    **everything: Any,
) -> prelabel.Report:
    """Segment everything in each sample of ``samples`` into ``field`` (options as
    :func:`unisam.segment_everything`), resuming where an earlier run stopped; returns the report.
    ``on_write``: called with the number of samples written after each database write.
    ``engine="ray"`` encodes on Ray workers; results are written here, so only the driver needs the
    database."""
    job = prelabel.Job(
        DatasetSource(samples),
        [prelabel.SegmentEverything(model, options=everything)],
        DetectionsSink(samples, field, on_write=on_write),
    )
    return job.run(engine, workers=workers, address=address, overwrite=overwrite, progress=progress)


def prelabel_target(name: str, field: str, shard_size: int | None = None) -> tuple[DatasetSource, DetectionsSink]:
    """The source and sink of ``unisam prelabel fiftyone:<name> --out <field>``: the image samples of
    the dataset ``name`` in, their ``field`` out (``shard_size`` samples per database write, default 16)."""
    if name not in fo.list_datasets():
        known = ", ".join(fo.list_datasets()) or "none"
        raise ValueError(f"no FiftyOne dataset named {name!r} (datasets: {known})")
    dataset = fo.load_dataset(name)
    if dataset.media_type != "image":
        raise ValueError(f"dataset {name!r} holds {dataset.media_type} samples; prelabel takes images "
                         "(track videos with the '@unisam/unisam/track' operator)")
    if not field or "." in field or field.startswith("_"):
        raise ValueError(f"{field!r} is not a field name for the labels (letters, digits, '_'; no '.')")
    return DatasetSource(dataset), DetectionsSink(dataset, field, 16 if shard_size is None else shard_size)


def shard_of(samples: fo.core.collections.SampleCollection, shard: int, shards: int) -> fo.core.view.DatasetView:
    """The samples of ``samples`` in shard ``shard`` of ``shards``: those whose id, read as a
    hexadecimal number, is ``shard`` modulo ``shards`` (computed by the database). A sample's shard
    depends on its id alone, so samples added or removed between runs never move between shards."""
    if not (isinstance(shards, int) and shards >= 1 and isinstance(shard, int) and 0 <= shard < shards):
        raise ValueError(f"shard must be in 0..shards-1 with shards >= 1, got shard={shard!r}, shards={shards!r}")
    digits = {"$map": {"input": {"$range": [0, 24]}, "as": "i", "in": {
        "$indexOfCP": ["0123456789abcdef", {"$substrCP": [{"$toString": "$_id"}, "$$i", 1]}]}}}
    remainder = {"$reduce": {"input": digits, "initialValue": 0, "in": {
        "$mod": [{"$add": [{"$multiply": ["$$value", 16]}, "$$this"]}, shards]}}}  # Horner's rule, mod shards
    return samples.mongo([{"$match": {"$expr": {"$eq": [remainder, shard]}}}])
