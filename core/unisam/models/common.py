"""Layers shared by the encoders and the prompt encoder / mask decoder.

``LayerNorm2d`` is a port of ``segment_anything/modeling/common.py`` (Meta, Apache-2.0);
``make_neck`` builds the neck of ``segment_anything/modeling/image_encoder.py``.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` map (eps 1e-6, as in SAM)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def make_neck(in_dim: int, out_dim: int) -> nn.Sequential:
    """SAM's neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (no conv biases).

    Maps ``(B, in_dim, H, W)`` to ``(B, out_dim, H, W)``; keys ``0.weight`` .. ``3.bias``.
    """
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False),
        LayerNorm2d(out_dim),
        nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_dim),
    )


def check_image(x: torch.Tensor, channels: int, size: int | None = None, multiple: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, channels, H, W)`` with ``H == W == size`` (if given)
    and ``H, W`` multiples of ``multiple``. Skipped while tracing, where the shapes are fixed anyway."""
    if torch.jit.is_tracing():
        return
    ok = x.dim() == 4 and x.shape[1] == channels
    if ok and size is not None:
        ok = x.shape[2] == x.shape[3] == size
    if ok:
        ok = x.shape[2] % multiple == 0 and x.shape[3] % multiple == 0
    if not ok:
        side = f"{size}, {size}" if size is not None else f"H, W (multiples of {multiple})"
        raise ValueError(f"expected an image batch (B, {channels}, {side}), got {tuple(x.shape)}")
