"""The public entry points: load a model by name, segment from prompts, segment everything."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .images import load_image
from .instances import Instances, masks_to_boxes
from .prompts import Prompt, collect_prompts
from .registry import BUNDLED_MODEL, ONNX_FORMAT, ArchSpec, ModelCard, get_card, list_models
from .runtime.cache import DiskEmbeddingCache
from .runtime.everything import segment_everything as _segment_everything
from .runtime.predictor import Predictor
from .weights import cache_dir, resolve_weight

PREFERRED_MODEL = "edgesam"  # the default once its official weights are in the cache

_ARCH_FIELDS = {f.name for f in dataclasses.fields(ArchSpec)}
_loaded: dict[str, Predictor] = {}
_loaded_lock = threading.Lock()


def default_model() -> str:
    """The model used when none is named: EdgeSAM when its official checkpoint (or its ONNX export)
    is in the cache directory, else the small model bundled with unisam, which needs no download."""
    card = get_card(PREFERRED_MODEL)
    assert card.checkpoint is not None
    exported = cache_dir() / "onnx" / f"{card.name}-{card.checkpoint.sha256[:12]}" / "model.json"
    if exported.is_file() or (cache_dir() / card.checkpoint.filename).is_file():
        return PREFERRED_MODEL
    return BUNDLED_MODEL


def load_model(
    name: str | None = None,
    *,
    weights: str | Path | None = None,
    download: bool = False,
    threads: int | None = None,
    disk_cache: str | Path | None = None,
) -> Predictor:
    """A new :class:`Predictor` for a registered model (see ``unisam weights list``; default
    :func:`default_model`). Servers and plugins share one per process with :func:`get_model`.

    ``weights``: a directory written by ``unisam export`` (encoder.onnx, decoder.onnx, model.json),
    or the model's official checkpoint file (verified by sha256). Without it, the weights are looked
    up in the cache directory (``UNISAM_CACHE_DIR``, default ``~/.cache/unisam``) and downloaded
    there only if ``download`` is true. A checkpoint is exported to ONNX once (needs the ``torch``
    extra) and the export is cached. ``disk_cache``: a directory for image embeddings, so reopening
    an image skips the encoder.
    """
    disk = DiskEmbeddingCache(disk_cache) if disk_cache is not None else None
    if weights is not None and Path(weights).is_dir():
        return _from_onnx_dir(Path(weights), name, threads, disk)
    card = get_card(name or default_model())
    if card.bundled is not None:
        if weights is not None:
            raise ValueError(f"model {card.name!r} ships with unisam: it takes no weights argument")
        return _from_onnx_dir(card.bundled, card.name, threads, disk)
    if card.checkpoint is None and card.onnx is not None:
        if weights is not None:
            raise ValueError(f"model {card.name!r} is an ONNX pair: pass the directory that holds both files")
        encoder, decoder = (resolve_weight(f, download=download, model=card.name) for f in card.onnx)
        model_id = f"{card.name}:{card.onnx[0].sha256[:12]}"
        return Predictor(encoder, decoder, card.arch, model_id, name=card.name, threads=threads, disk_cache=disk)
    if card.checkpoint is None:
        raise ValueError(f"model {card.name!r} has no weight files registered")
    checkpoint = resolve_weight(card.checkpoint, path=weights, download=download, model=card.name)
    out = cache_dir() / "onnx" / f"{card.name}-{card.checkpoint.sha256[:12]}"
    if not (out / "model.json").is_file():
        export_checkpoint(card, checkpoint, out)
    return _from_onnx_dir(out, card.name, threads, disk)


def export_checkpoint(card: ModelCard, checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Build ``card``'s architecture, load ``checkpoint`` strictly and export it to ONNX in ``out_dir``."""
    try:
        from .models import build_sam, export_onnx, load_checkpoint
    except ImportError as exc:
        raise ImportError(
            f"exporting {card.name!r} from its PyTorch checkpoint needs the torch extra: "
            f"pip install 'unisam[torch]' ({exc})"
        ) from exc
    model = build_sam(card.arch)
    load_checkpoint(model, checkpoint)
    export_onnx(model, out_dir)
    return Path(out_dir)


def _from_onnx_dir(directory: Path, name: str | None, threads: int | None, disk) -> Predictor:
    meta_path = directory / "model.json"
    if not meta_path.is_file():
        raise ValueError(f"{directory} has no model.json: not a directory written by `unisam export`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != ONNX_FORMAT:
        raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r} (expected {ONNX_FORMAT})")
    spec = ArchSpec.from_dict({k: v for k, v in meta.items() if k in _ARCH_FIELDS})
    encoder_sha = meta.get("encoder_sha256") or _sha256(directory / "encoder.onnx")
    label = name or meta.get("name") or directory.name
    return Predictor(
        directory / "encoder.onnx",
        directory / "decoder.onnx",
        spec,
        f"{label}:{encoder_sha[:12]}",
        name=label,
        threads=threads,
        disk_cache=disk,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def get_model(model: Predictor | str | None = None) -> Predictor:
    """The process-wide shared predictor for a registered name (default :func:`default_model`),
    loaded once and thread-safe, so its embedding cache serves every caller; a Predictor passes through."""
    if isinstance(model, Predictor):
        return model
    name = model or default_model()
    with _loaded_lock:
        if name not in _loaded:
            _loaded[name] = load_model(name)
        return _loaded[name]


def segment(
    image,
    prompts: Prompt | Sequence[Prompt] | None = None,
    *,
    points=None,
    labels=None,
    box=None,
    model: Predictor | str | None = None,
    multimask: bool | None = None,
) -> Instances:
    """One instance per prompt, at the image's original size.

    Give ``prompts`` (one or many :class:`Prompt`), or the fields of a single prompt as keywords
    (``points`` (N, 2) xy pixels, ``labels`` (N,) 1/0, ``box`` x1, y1, x2, y2). The image is encoded
    once for all prompts. ``multimask`` (default: only for a lone click, SAM's advice for ambiguous
    prompts) picks the best of three candidate masks by predicted IoU.
    """
    predictor = get_model(model)
    embedding = predictor.embed(image)
    items = collect_prompts(prompts, points, labels, box, image_size=embedding.original_size)
    flags = [p.is_single_point if multimask is None else multimask for p in items]
    predictions = predictor.predict_prompts(embedding, items, flags, best_only=True)
    masks = np.stack([p.masks[0] for p in predictions])
    scores = np.array([p.scores[0] for p in predictions], np.float32)
    names = [p.label for p in items]
    return Instances(
        masks=masks,
        boxes=masks_to_boxes(masks),
        scores=scores,
        labels=names if any(n is not None for n in names) else None,
    )


def everything_defaults(model: Predictor | str | None = None) -> dict[str, Any]:
    """The parameters :func:`segment_everything` uses for ``model`` when none are given: SAM's
    automatic-mask-generator defaults, with the model card's own thresholds where it has them."""
    params = inspect.signature(_segment_everything).parameters
    defaults = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k != "progress"}
    name = model.name if isinstance(model, Predictor) else model or default_model()
    card = get_card(name) if name in list_models() else None
    return {**defaults, **(card.everything if card else {})}


def segment_everything(image, *, model: Predictor | str | None = None, **params) -> Instances:
    """Automatic instance masks for the whole image (SAM's automatic mask generator recipe).

    ``params`` go to :func:`unisam.runtime.everything.segment_everything` (points_per_side,
    pred_iou_thresh, stability_score_thresh, box_nms_thresh, crop_n_layers, min_mask_region_area,
    progress, ...); those not given come from :func:`everything_defaults`.
    """
    predictor = get_model(model)
    return _segment_everything(load_image(image), predictor, **{**everything_defaults(predictor), **params})
