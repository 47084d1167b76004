"""Models by name: the one place where a model argument becomes a :class:`Predictor`.

Every public function and every host adapter passes its ``model`` argument through :func:`get_model`
(shared, one predictor per process and model) or :func:`load_model` (a new one). A model is a
registered name (``unisam weights list``), a directory written by ``unisam export``, or a
:class:`Predictor`, which passes through.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from .registry import BUNDLED_MODEL, ModelCard, get_card, list_models, read_export
from .runtime.cache import DiskEmbeddingCache
from .runtime.predictor import Predictor
from .weights import cache_dir, cached_sha256, resolve_weight, sha256_file

PREFERRED_MODEL = "edgesam"  # the default once its official weights are in the cache

ModelArg = Predictor | str | Path | None

_shared: dict[tuple[str, str | None], Predictor] = {}
_shared_lock = threading.Lock()


def default_model() -> str:
    """The model used when none is named: EdgeSAM when its official checkpoint (or its ONNX export)
    is in the cache directory, else the small model bundled with unisam, which needs no download."""
    card = get_card(PREFERRED_MODEL)
    assert card.checkpoint is not None
    if _export_dir(card, card.checkpoint.sha256).joinpath("model.json").is_file():
        return PREFERRED_MODEL
    if (cache_dir() / card.checkpoint.filename).is_file():
        return PREFERRED_MODEL
    return BUNDLED_MODEL


def load_model(
    name: str | None = None,
    *,
    weights: str | Path | None = None,
    download: bool = False,
    threads: int | None = None,
    disk_cache: str | Path | None = None,
    verify: bool = False,
) -> Predictor:
    """A new :class:`Predictor` for a registered model (see ``unisam weights list``; default
    :func:`default_model`). Servers and plugins share one per process with :func:`get_model`.

    ``weights``: a directory written by ``unisam export`` (encoder.onnx, decoder.onnx, model.json),
    or a checkpoint file in the official layout of the model's architecture: the official file or your
    own, e.g. fine-tuned, weights (``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or
    ``.safetensors``; every key of the architecture must be there with its shape). A file whose sha256
    differs from the registry's is logged as your own weights for that architecture; ``verify=True``
    refuses it instead. Without ``weights``, the official file is looked up in the cache directory
    (``UNISAM_CACHE_DIR``, default ``~/.cache/unisam``), downloaded there only if ``download`` is true,
    and always checked against the registry's sha256. A checkpoint is exported to ONNX once (needs the
    ``torch`` extra); the export is cached under ``onnx/<name>-<sha256[:12]>`` of the checkpoint file,
    so different files never share an export. ``disk_cache``: a directory for image embeddings, so
    reopening an image skips the encoder.
    """
    disk = DiskEmbeddingCache(disk_cache) if disk_cache is not None else None
    if weights is not None and Path(weights).is_dir():
        return _from_onnx_dir(Path(weights), name, threads, disk)
    card = get_card(name or default_model())
    if card.bundled is not None:
        if weights is not None:
            hint = "" if name else (
                f"; name the architecture of a checkpoint file, e.g. load_model({PREFERRED_MODEL!r}, weights=...)"
            )
            raise ValueError(f"model {card.name!r} ships with unisam: it takes no weights argument{hint}")
        return _from_onnx_dir(card.bundled, card.name, threads, disk)
    if card.checkpoint is None and card.onnx is not None:
        if weights is not None:
            raise ValueError(f"model {card.name!r} is an ONNX pair: pass the directory that holds both files")
        encoder, decoder = (resolve_weight(f, download=download, model=card.name) for f in card.onnx)
        model_id = f"{card.name}:{card.onnx[0].sha256[:12]}"
        return Predictor(encoder, decoder, card.arch, model_id, name=card.name, threads=threads, disk_cache=disk)
    if card.checkpoint is None:
        raise ValueError(f"model {card.name!r} has no weight files registered")
    checkpoint = resolve_weight(card.checkpoint, path=weights, download=download, model=card.name, verify=verify)
    out = _export_dir(card, cached_sha256(checkpoint))  # hashed once per file version, then remembered
    if not (out / "model.json").is_file():
        _export_into_cache(card, checkpoint, out)
    return _from_onnx_dir(out, card.name, threads, disk)


def _export_into_cache(card: ModelCard, checkpoint: Path, out: Path) -> None:
    """:func:`export_checkpoint` into a temporary sibling of ``out``, then renamed into place, so an
    interrupted export or a concurrent one never leaves a half-written ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        export_checkpoint(card, checkpoint, tmp)
        if (out / "model.json").is_file():
            return  # another process finished the same export first
        if out.exists():
            shutil.rmtree(out)  # a partial export left by an older version
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "model.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def get_model(model: ModelArg = None, *, disk_cache: str | Path | None = None) -> Predictor:
    """The process-wide shared predictor for ``model``: a registered name (default
    :func:`default_model`) or an export directory, loaded once and thread-safe, so its embedding cache
    serves every caller. A :class:`Predictor` passes through. ``disk_cache`` as in :func:`load_model`
    (one shared predictor per model and disk cache)."""
    if isinstance(model, Predictor):
        return model
    name = model_name(model)
    if model is not None and Path(model).is_dir():
        key, load = str(Path(model).resolve()), lambda: load_model(weights=model, disk_cache=disk_cache)
    else:
        key, load = name, lambda: load_model(name, disk_cache=disk_cache)
    cache_key = (key, None if disk_cache is None else str(Path(disk_cache).resolve()))
    with _shared_lock:
        if cache_key not in _shared:
            _shared[cache_key] = load()
        return _shared[cache_key]


def model_name(model: ModelArg = None) -> str:
    """The name of ``model`` without loading it: a registered name, an export directory's name, or a
    predictor's ``name``; None gives :func:`default_model`. An unknown name raises ``ValueError``."""
    if isinstance(model, Predictor):
        return model.name
    if model is None:
        return default_model()
    if Path(model).is_dir():
        return Path(model).name
    if str(model) not in list_models():
        raise ValueError(
            f"unknown model {str(model)!r}: give a registered model ({', '.join(list_models())}) "
            "or a directory written by `unisam export`"
        )
    return str(model)


def export_checkpoint(card: ModelCard, checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Build ``card``'s architecture, load ``checkpoint`` strictly and safely (see
    :func:`unisam.models.load_checkpoint`) and export it to ONNX in ``out_dir``. Raises ``ValueError``
    naming the missing or misshapen keys when the file is not in that architecture's layout."""
    try:
        from .models import build_sam, export_onnx, load_checkpoint
    except ImportError as exc:
        raise ImportError(
            f"exporting {card.name!r} from its PyTorch checkpoint needs the torch extra: "
            f"pip install 'unisam[torch]' ({exc})"
        ) from exc
    model = build_sam(card.arch)
    load_checkpoint(model, checkpoint, what=f"the official layout of {card.name!r}")
    export_onnx(model, out_dir)
    return Path(out_dir)


def _export_dir(card: ModelCard, digest: str) -> Path:
    """Where the ONNX export of ``card`` from the checkpoint file with sha256 ``digest`` is cached (the
    file's own digest: the registry's for the official file, another for your own weights)."""
    return cache_dir() / "onnx" / f"{card.name}-{digest[:12]}"


def _from_onnx_dir(directory: Path, name: str | None, threads: int | None, disk) -> Predictor:
    spec, meta = read_export(directory)
    encoder_sha = meta.get("encoder_sha256") or sha256_file(directory / "encoder.onnx")
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
