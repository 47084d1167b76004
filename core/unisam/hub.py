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
from collections.abc import Callable
from pathlib import Path

from .registry import (
    BUNDLED_MODEL, DEFAULT_LABEL_MODEL, INSTANCE_HEAD_FILE, ModelCard, get_card, get_label_card, list_label_models,
    list_models, read_export, require_license,
)
from .runtime.cache import DiskEmbeddingCache
from .runtime.clip import ClipModel
from .runtime.predictor import Predictor
from .weights import WeightsNotFoundError, cache_dir, cached_sha256, resolve_weight, sha256_file

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
        _export_into_cache(lambda tmp: export_checkpoint(card, checkpoint, tmp), out)
    return _from_onnx_dir(out, card.name, threads, disk)


def _export_into_cache(write: Callable[[Path], object], out: Path) -> None:
    """``write(directory)`` into a temporary sibling of ``out``, then renamed into place, so an
    interrupted export or a concurrent one never leaves a half-written ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        write(tmp)
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
    head = directory / INSTANCE_HEAD_FILE
    if head.is_file() and meta.get("instances_sha256") not in (None, sha256_file(head)):
        raise ValueError(
            f"{head}: its sha256 is not the instances_sha256 of {directory / 'model.json'} (a head of another model?)"
        )
    return Predictor(
        directory / "encoder.onnx",
        directory / "decoder.onnx",
        spec,
        f"{label}:{encoder_sha[:12]}",
        name=label,
        threads=threads,
        disk_cache=disk,
        instance_head=head if head.is_file() else None,
    )


# -- label models (open_clip CLIP, for unisam.label) --------------------------------------------------

LabelModelArg = ClipModel | str | Path | None

_shared_label: dict[str, ClipModel] = {}


def load_label_model(
    arch: str | Path,
    *,
    pretrained: str | None = None,
    weights: str | Path | None = None,
    download: bool = True,
    threads: int | None = None,
    accept_license: str | None = None,
) -> ClipModel:
    """A new :class:`ClipModel` (for :func:`unisam.label`) by open_clip's names.

    ``arch``: an open_clip architecture (``open_clip.list_models()``), or a directory written by
    ``unisam.models.clip.export_clip``. ``pretrained``: an open_clip pretrained tag with registered
    weights (``unisam.registry.list_label_models()``), downloaded once (``download=False``: only the
    cache) into the cache directory and checked against its sha256. Weights under a licence that is
    not permissive (``card.opt_in``) are neither downloaded nor used unless ``accept_license`` names
    it (or ``$UNISAM_ACCEPT_LICENSES`` lists it): :class:`unisam.registry.LicenseNotAcceptedError`
    otherwise. ``weights``: your own open_clip state dict (``.bin``/``.pt`` read with
    ``torch.load(weights_only=True)``, or ``.safetensors``) or an OpenAI CLIP TorchScript archive.
    A checkpoint is exported to ONNX once (needs the ``clip`` extra: torch and open_clip) and cached
    under ``onnx-clip/<arch>-<sha256[:12]>``; later loads need neither torch nor open_clip. Text
    embeddings are cached under ``text-embeddings/``.
    """
    text_cache = cache_dir() / "text-embeddings"
    if Path(arch).is_dir():
        if pretrained is not None or weights is not None:
            raise ValueError(f"{arch} is an exported model directory: it takes no pretrained or weights")
        return ClipModel(arch, threads=threads, text_cache=text_cache)
    arch = str(arch)
    if pretrained is not None and weights is not None:
        raise ValueError("give pretrained= (registered weights) or weights= (your own file), not both")
    if weights is not None:
        checkpoint = Path(weights).expanduser()
        if not checkpoint.is_file():
            raise WeightsNotFoundError(f"weight file {checkpoint} does not exist")
        name = arch
    elif pretrained is not None:
        card = get_label_card(arch, pretrained)
        require_license(card, accept_license)
        checkpoint = resolve_weight(card.weights, download=download, model=card.name)
        name = card.name
    else:
        raise ValueError(
            f"name the weights of {arch!r}: pretrained=<open_clip tag> (registered: "
            f"{', '.join(list_label_models()) or 'none'}) or weights=<an open_clip state-dict file>"
        )
    out = cache_dir() / "onnx-clip" / f"{arch.replace('/', '_')}-{cached_sha256(checkpoint)[:12]}"
    if not (out / "model.json").is_file():
        _export_into_cache(lambda tmp: _export_clip(arch, checkpoint, tmp, pretrained), out)
    return ClipModel(out, name=name, threads=threads, text_cache=text_cache)


def _export_clip(arch: str, checkpoint: Path, out: Path, pretrained: str | None) -> None:
    try:
        from .models.clip import build_open_clip, export_clip
    except ImportError as exc:
        raise ImportError(
            f"exporting the open_clip model {arch!r} to ONNX needs the clip extra (torch and open_clip): "
            f"pip install '.[clip]' ({exc})"
        ) from exc
    export_clip(build_open_clip(arch, checkpoint), arch, out, pretrained=pretrained)


def get_label_model(model: LabelModelArg = None) -> ClipModel:
    """The process-wide shared label model: a :class:`ClipModel` passes through; ``"arch/pretrained"``
    (a registered pair) or an export directory is loaded once; None is :data:`DEFAULT_LABEL_MODEL`
    from the cache (never downloaded implicitly: ``unisam.load_label_model(arch, pretrained=...)``
    fetches it)."""
    if isinstance(model, ClipModel):
        return model
    key = str(Path(model).resolve()) if model is not None and Path(model).is_dir() else str(model or DEFAULT_LABEL_MODEL)
    with _shared_lock:
        if key not in _shared_label:
            if Path(key).is_dir():
                _shared_label[key] = load_label_model(key)
            else:
                arch, sep, tag = key.partition("/")
                if not sep:
                    raise ValueError(f"label model {key!r}: give 'arch/pretrained' or an exported directory")
                _shared_label[key] = load_label_model(arch, pretrained=tag, download=model is not None)
        return _shared_label[key]
