"""Strict, safe loading and saving of official-layout (flat) SAM-family state dicts.

``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` (no arbitrary pickles);
``.safetensors`` files with safetensors; TorchScript archives (OpenAI publishes CLIP so) with
``torch.jit.load`` on the CPU, whose deserializer builds TorchScript's own types only (no Python pickle),
and only their tensors are kept. Every parameter and buffer of the model must be present with
the right shape; keys the file has but the model does not use are reported and logged.

Unreadable files raise ``ValueError`` with a message, not the loader's traceback: a pickle that refers
to other Python objects than tensors (one that would run code when unpickled) is refused unexecuted and
the offending callables are named; a truncated or corrupt file says so.
"""

from __future__ import annotations

import io
import logging
import pickle
import pickletools
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..weights import WeightsNotFoundError

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "state_dict")
_LIST_LIMIT = 5


@dataclass
class LoadReport:
    """Outcome of :func:`load_checkpoint`: how many tensors were loaded, and the keys left unused."""

    path: str
    loaded: int
    unexpected: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` mapping stored in ``path``.

    Accepts a flat state dict or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}`` (training
    checkpoints), or a TorchScript archive (its ``state_dict()``); refuses pickled objects other than
    tensors and plain containers. Raises
    ``WeightsNotFoundError`` for a missing file and ``ValueError`` for one that cannot be read safely.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError (an Exception)
            message = f"{path} could not be read as a safetensors file; it may be truncated or corrupt ({exc})"
            raise ValueError(message) from None
    if is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as exc:  # torch raises RuntimeError and others on a damaged archive
            detail = (str(exc).splitlines() or [""])[0] or type(exc).__name__
            message = f"{path} could not be read as a TorchScript archive; it may be truncated or corrupt ({detail})"
            raise ValueError(message) from None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        foreign = _foreign_globals(path)
        if foreign:
            raise ValueError(
                f"{path} is not a plain tensor checkpoint: its pickle refers to {_head(foreign)}, which "
                "unpickling would call (it could run arbitrary code). It was refused and not executed: "
                "unisam reads checkpoints with torch.load(weights_only=True). Save plain tensors, e.g. "
                "torch.save(model.state_dict(), path), or a .safetensors file"
            ) from None
        raise ValueError(
            f"{path} is not a plain tensor checkpoint: the safe (weights_only) loader could not read it "
            f"({_unpickling_detail(exc)}); nothing in it was executed. The file may be truncated or corrupt, "
            "or not a PyTorch checkpoint"
        ) from None
    except Exception as exc:  # torch raises anything from RuntimeError to IndexError on a damaged file
        detail = (str(exc).splitlines() or [""])[0].split(". ")[0].rstrip(".") or type(exc).__name__
        raise ValueError(
            f"{path} could not be read as a PyTorch checkpoint; it may be truncated or corrupt ({detail})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected a state dict")
    for key in _WRAPPER_KEYS:
        if key in data and isinstance(data[key], dict) and not any(torch.is_tensor(v) for v in data.values()):
            data = data[key]
            break
    bad = [k for k, v in data.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} entries are not tensors: {_head(bad)}")
    return data


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript zip archive (``torch.jit.save``; it holds a ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _unpickling_detail(exc: Exception) -> str:
    """The informative line of torch's weights_only refusal (its wrapper text is generic)."""
    cause = exc.__context__ if isinstance(exc.__context__, pickle.UnpicklingError) else None
    if cause is not None and str(cause).strip():
        return str(cause).strip().splitlines()[0]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "nsupported" in line), lines[0] if lines else type(exc).__name__)


def _foreign_globals(path: Path) -> list[str]:
    """The callables other than torch's tensor rebuilders that the pickle in ``path`` names, found by
    reading its opcodes (:mod:`pickletools`; nothing is unpickled). Empty when none, or unreadable."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError, RuntimeError):
        return []
    found: list[str] = []
    stream = io.BytesIO(data)
    strings: list[str] = []
    try:
        while stream.tell() < len(data):  # legacy files hold several pickles in a row
            for opcode, arg, _ in pickletools.genops(stream):
                if ("STRING" in opcode.name or "UNICODE" in opcode.name) and isinstance(arg, str):
                    strings = (strings + [str(arg)])[-2:]
                elif opcode.name == "GLOBAL":  # protocol 2 spells builtins as Python 2 did
                    found.append(str(arg).replace(" ", ".").replace("__builtin__.", "builtins.", 1))
                elif opcode.name == "STACK_GLOBAL":
                    found.append(".".join(strings) if len(strings) == 2 else "a Python object")
    except Exception:  # truncated or not a pickle: report what was read up to there
        pass
    allowed = ("torch.", "collections.OrderedDict")
    return list(dict.fromkeys(name for name in found if not name.startswith(allowed)))


def load_checkpoint(model: nn.Module, path: str | Path, *, what: str = "the model") -> LoadReport:
    """Load ``path`` into ``model`` strictly; raise ``ValueError`` listing missing/mismatched keys (and
    the file's extra keys, which often tell which architecture it was saved from). Extra keys alone are
    no error: they are logged (WARNING) and listed in the report's ``unexpected``. ``what`` names the
    model in that error."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    unexpected = [k for k in state if k not in expected]
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {_head(missing)}")
        if mismatched:
            problems.append(f"{len(mismatched)} keys with wrong shape: {_head(mismatched)}")
        if unexpected:
            problems.append(f"{len(unexpected)} keys the model does not have: {_head(unexpected)}")
        raise ValueError(f"checkpoint {path} does not fit {what}: " + "; ".join(problems))
    if unexpected:
        logger.warning("checkpoint %s: %d keys not used by the model: %s", path, len(unexpected), _head(unexpected))
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return LoadReport(path=str(path), loaded=len(expected), unexpected=unexpected)


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict in the official flat layout (``.safetensors`` or torch pickle)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _head(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    return shown + (f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else "")
