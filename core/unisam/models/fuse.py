"""Inference-time re-parameterisation: fold BatchNorms into the adjacent linear layers.

:func:`fuse_for_inference` returns an eval-mode copy of any module in which

- every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an ``nn.Sequential`` (e.g.
  :class:`~unisam.models.repvit.ConvBN`) becomes one biased ``Conv2d``;
- every ``Linear`` followed by a ``BatchNorm1d``, or ``BatchNorm1d`` followed by ``Linear``, inside an
  ``nn.Sequential`` becomes one ``Linear`` (valid for ``(B, F)`` inputs, where those pairs are usable);
- every :class:`~unisam.models.repvit.RepVGGDW` (3x3 depthwise ConvBN + 1x1 depthwise ConvBN + identity)
  becomes one 3x3 depthwise ``Conv2d``;
- every 2x bilinear/bicubic ``nn.Upsample`` (``align_corners=False``) becomes :class:`Upsample2x`, the
  same arithmetic as edge padding + one small convolution + pixel shuffle (ONNX Runtime's cubic
  ``Resize`` was 18% of the EdgeSAM encoder's time at 1024; the convolution is a fraction of a percent).

A removed BatchNorm is replaced by ``nn.Identity`` so module names stay stable. The folding uses the
BatchNorm running statistics, so the result equals the eval-mode input. Arithmetic is done in float64
and cast back to the layer's dtype.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .repvit import RepVGGDW

_BatchNorm = nn.BatchNorm1d | nn.BatchNorm2d


def _bn_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` in float64 with ``bn(x) == x * scale + shift`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: it tracks no running statistics")
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _new_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased copy of ``conv``'s geometry holding ``weight`` and ``bias`` (cast to its dtype)."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


def _folded_conv_params(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(weight, bias)`` of ``bn(conv(x))`` as a single conv."""
    scale, shift = _bn_scale_shift(bn)
    weight = conv.weight.double() * scale[:, None, None, None]
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    return weight, bias


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One ``Conv2d`` equal to ``bn(conv(x))`` with ``bn`` in eval mode."""
    return _new_conv(conv, *_folded_conv_params(conv, bn))


def fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """One ``Linear`` equal to ``bn(linear(x))`` for ``(B, in_features)`` inputs, ``bn`` in eval mode."""
    scale, shift = _bn_scale_shift(bn)
    weight = linear.weight.double() * scale[:, None]
    bias = shift if linear.bias is None else linear.bias.double() * scale + shift
    return _new_linear(linear, weight, bias)


def fold_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """One ``Linear`` equal to ``linear(bn(x))`` for ``(B, in_features)`` inputs, ``bn`` in eval mode."""
    scale, shift = _bn_scale_shift(bn)
    weight = linear.weight.double()
    bias = weight @ shift
    if linear.bias is not None:
        bias = bias + linear.bias.double()
    return _new_linear(linear, weight * scale[None, :], bias)


def _new_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    fused = nn.Linear(
        linear.in_features, linear.out_features, bias=True, device=linear.weight.device, dtype=linear.weight.dtype
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


def merge_repvgg_dw(block: RepVGGDW) -> nn.Conv2d:
    """One 3x3 depthwise ``Conv2d`` equal to ``block`` (3x3 dw ConvBN + 1x1 dw ConvBN + identity)."""
    w3, b3 = _folded_conv_params(block.conv.c, block.conv.bn)  # (C, 1, 3, 3)
    w1, b1 = _folded_conv_params(block.conv1.c, block.conv1.bn)  # (C, 1, 1, 1)
    weight = w3 + F.pad(w1, [1, 1, 1, 1])
    weight[:, 0, 1, 1] += 1.0  # the identity branch: a centred unit tap per channel
    return _new_conv(block.conv.c, weight, b3 + b1)


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the 4 taps around a sample at fraction ``t`` (PyTorch's a)."""

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


class Upsample2x(nn.Module):
    """Exact 2x upsampling, bilinear or bicubic with ``align_corners=False``, as a convolution.

    With scale 2, output pixel ``2k`` samples the input at ``k - 0.25`` and ``2k + 1`` at ``k + 0.25``,
    so each output phase is a fixed 5-tap filter over inputs ``k-2 .. k+2``; PyTorch clamps sample
    indices at the border, which is edge padding. (B, C, H, W) -> (B, C, 2H, 2W).
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode == "bicubic":
            even = [*_cubic_weights(0.75), 0.0]  # taps k-2 .. k+1
            odd = [0.0, *_cubic_weights(0.25)]  # taps k-1 .. k+2
        elif mode == "bilinear":
            even = [0.0, 0.25, 0.75, 0.0, 0.0]
            odd = [0.0, 0.0, 0.75, 0.25, 0.0]
        else:
            raise ValueError(f"Upsample2x supports bilinear and bicubic, not {mode!r}")
        taps = torch.tensor([even, odd], dtype=torch.float64)  # (phase, 5)
        kernel = taps[:, None, :, None] * taps[None, :, None, :]  # (row phase, col phase, 5, 5)
        self.register_buffer("weight", kernel.reshape(4, 1, 5, 5).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = F.pad(x.reshape(b * c, 1, h, w), (2, 2, 2, 2), mode="replicate")
        y = F.pixel_shuffle(F.conv2d(y, self.weight.to(x.dtype)), 2)  # (b*c, 1, 2h, 2w)
        return y.reshape(b, c, 2 * h, 2 * w)


def _as_upsample2x(module: nn.Module) -> Upsample2x | None:
    """The :class:`Upsample2x` equal to ``module``, if it is such an ``nn.Upsample``."""
    if not isinstance(module, nn.Upsample) or module.size is not None:
        return None
    if module.mode not in ("bilinear", "bicubic") or module.align_corners:
        return None
    factor = module.scale_factor
    factors = factor if isinstance(factor, tuple) else (factor, factor)
    return Upsample2x(module.mode) if all(float(f) == 2.0 for f in factors) else None


def _fold_sequential(seq: nn.Sequential) -> None:
    """Fold adjacent (Conv2d, BatchNorm2d), (Linear, BatchNorm1d), (BatchNorm1d, Linear) children in place."""
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        a, b = seq._modules[first], seq._modules[second]
        if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
            seq._modules[first], seq._modules[second] = fold_conv_bn(a, b), nn.Identity()
        elif isinstance(a, nn.Linear) and isinstance(b, nn.BatchNorm1d):
            seq._modules[first], seq._modules[second] = fold_linear_bn(a, b), nn.Identity()
        elif isinstance(a, nn.BatchNorm1d) and isinstance(b, nn.Linear):
            seq._modules[first], seq._modules[second] = nn.Identity(), fold_bn_linear(a, b)


def _fuse_in_place(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        upsample = _as_upsample2x(child)
        if isinstance(child, RepVGGDW):
            setattr(module, name, merge_repvgg_dw(child))
        elif upsample is not None:
            setattr(module, name, upsample)
        else:
            _fuse_in_place(child)
    if isinstance(module, nn.Sequential):
        _fold_sequential(module)


@torch.no_grad()
def fuse_for_inference(module: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``module`` with BatchNorms folded and RepVGG blocks merged.

    The input is not modified. Outputs equal the input's eval-mode outputs up to float rounding
    (relative error around 1e-6 in float32).
    """
    fused = copy.deepcopy(module).eval()
    if isinstance(fused, RepVGGDW):
        return merge_repvgg_dw(fused)
    _fuse_in_place(fused)
    return fused
