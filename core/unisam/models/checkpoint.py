"""Strict, safe loading and saving of official-layout (flat) SAM-family state dicts.

``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` (no arbitrary pickles);
``.safetensors`` files with safetensors. Every parameter and buffer of the model must be present with
the right shape; keys the file has but the model does not use are reported and logged.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

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
    checkpoints); refuses pickled objects other than tensors and plain containers.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).splitlines() or [""]
        detail = next((line.strip() for line in lines if "Unsupported" in line), lines[0])
        raise ValueError(f"{path} is not a plain tensor checkpoint (refused by weights_only loading): {detail}") \
            from exc
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


def load_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """Load ``path`` into ``model`` strictly; raise ``ValueError`` listing missing/mismatched keys."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {_head(missing)}")
        if mismatched:
            problems.append(f"{len(mismatched)} keys with wrong shape: {_head(mismatched)}")
        raise ValueError(f"checkpoint {path} does not fit the model: " + "; ".join(problems))
    unexpected = [k for k in state if k not in expected]
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
