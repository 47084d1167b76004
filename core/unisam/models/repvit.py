"""EdgeSAM's RepViT image encoder, state-dict compatible with ``edge_sam``'s ``RepViT``.

A ``(B, 3, S, S)`` normalised image (``S`` a multiple of 32) becomes ``(B, out_dim, S/16, S/16)``
features. A conv stem (stride 4) feeds a stack of RepViT blocks laid out by ``cfgs``, grouped into four
stages of stride 4, 8, 16 and 32. With ``fuse=True`` (EdgeSAM's default) the neck input is the sum of a
1x1 projection of the stride-16 stage and a 1x1 projection of the stride-32 stage upsampled 2x; with
``fuse=False`` the last stage keeps stride 16 and feeds the neck alone. Conv+BN pairs are stored
un-folded, as in the official checkpoint; :func:`unisam.models.fuse.fuse_for_inference` folds them.

Port of EdgeSAM's ``edge_sam/modeling/rep_vit.py`` (EdgeSAM is under the S-Lab License 1.0; RepViT
itself comes from THU-MIG/RepViT, Apache-2.0); ``SqueezeExcite`` mirrors timm's ``SEModule``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import check_image, make_neck

# One row per block: kernel size, expansion, output channels, squeeze-excite, hard-swish flag (the
# official model uses GELU either way), stride.
M1_CFGS: list[list[int]] = (
    [[3, 2, 48, 1, 0, 1], [3, 2, 48, 0, 0, 1], [3, 2, 48, 0, 0, 1]]
    + [[3, 2, 96, 0, 0, 2], [3, 2, 96, 1, 0, 1], [3, 2, 96, 0, 0, 1], [3, 2, 96, 0, 0, 1]]
    + [[3, 2, 192, 0, 1, 2]]
    + [[3, 2, 192, 1 - i % 2, 1, 1] for i in range(14)]
    + [[3, 2, 192, 0, 1, 1]]
    + [[3, 2, 384, 0, 1, 2], [3, 2, 384, 1, 1, 1], [3, 2, 384, 0, 1, 1]]
)
M2_CFGS: list[list[int]] = (
    [[3, 2, 64, 1, 0, 1], [3, 2, 64, 0, 0, 1], [3, 2, 64, 0, 0, 1]]
    + [[3, 2, 128, 0, 0, 2], [3, 2, 128, 1, 0, 1], [3, 2, 128, 0, 0, 1], [3, 2, 128, 0, 0, 1]]
    + [[3, 2, 256, 0, 1, 2]]
    + [[3, 2, 256, 1 - i % 2, 1, 1] for i in range(12)]
    + [[3, 2, 256, 0, 1, 1]]
    + [[3, 2, 512, 0, 1, 2], [3, 2, 512, 1, 1, 1], [3, 2, 512, 0, 1, 1]]
)
M3_CFGS: list[list[int]] = (
    [[3, 2, 64, 1 - i % 2, 0, 1] for i in range(4)]
    + [[3, 2, 64, 0, 0, 1]]
    + [[3, 2, 128, 0, 0, 2]]
    + [[3, 2, 128, 1 - i % 2, 0, 1] for i in range(4)]
    + [[3, 2, 128, 0, 0, 1]]
    + [[3, 2, 256, 0, 1, 2]]
    + [[3, 2, 256, 1 - i % 2, 1, 1] for i in range(18)]
    + [[3, 2, 256, 0, 1, 1]]
    + [[3, 2, 512, 0, 1, 2], [3, 2, 512, 1, 1, 1], [3, 2, 512, 0, 1, 1]]
)
ARCH_CFGS: dict[str, list[list[int]]] = {"m1": M1_CFGS, "m2": M2_CFGS, "m3": M3_CFGS}
UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")


class ConvBN(nn.Sequential):
    """Bias-free ``Conv2d`` (child ``c``) followed by ``BatchNorm2d`` (child ``bn``).

    ``bn_weight_init=0`` zero-initialises the BN scale (used on residual branches).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class SqueezeExcite(nn.Module):
    """timm's SE module at ratio 1/4: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``, (B,C,H,W) -> same.

    The reduced width is ``max(8, round_to_8(C / 4))`` (timm's ``make_divisible`` with no 90% rule).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = max(8, int(channels / 4 + 4) // 8 * 8)
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


class Residual(nn.Module):
    """``x + m(x)``; the branch is stored as child ``m``."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class RepVGGDW(nn.Module):
    """Re-parameterisable depthwise mixer: ``bn(dw3x3(x)) + bn(dw1x1(x)) + x``, (B,C,H,W) -> same.

    :func:`unisam.models.fuse.fuse_for_inference` merges the three branches into one 3x3 depthwise conv.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvBN(channels, channels, 3, 1, 1, groups=channels)
        self.conv1 = ConvBN(channels, channels, 1, 1, 0, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x


def _channel_mixer(channels: int) -> Residual:
    """Residual 1x1 conv MLP with 2x expansion and GELU; the last BN scale starts at zero."""
    return Residual(
        nn.Sequential(
            ConvBN(channels, 2 * channels),
            nn.GELU(),
            ConvBN(2 * channels, channels, bn_weight_init=0.0),
        )
    )


class RepViTBlock(nn.Module):
    """One RepViT block: ``token_mixer`` (spatial, optionally strided) then ``channel_mixer``.

    Stride 1 (``in_ch == out_ch``): RepVGGDW + optional SE. Stride 2: strided ``kernel_size``
    depthwise ConvBN + optional SE + 1x1 ConvBN to ``out_ch``. ``stride`` is the effective stride; a
    downsampling row run at stride 1 (EdgeSAM's ``skip_downsample``) keeps the downsampling layout.
    Maps (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, use_se: bool, downsample: bool, stride: int
    ) -> None:
        super().__init__()
        se: nn.Module = SqueezeExcite(in_ch) if use_se else nn.Identity()
        if downsample:
            pad = (kernel_size - 1) // 2
            self.token_mixer = nn.Sequential(
                ConvBN(in_ch, in_ch, kernel_size, stride, pad, groups=in_ch), se, ConvBN(in_ch, out_ch)
            )
        else:
            self.token_mixer = nn.Sequential(RepVGGDW(in_ch), se)
        self.channel_mixer = _channel_mixer(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class ConvUpsample(nn.Module):
    """Bias-free 1x1 conv then 2x upsampling; children kept in ``op_list`` (EdgeSAM's key layout).

    (B, in_ch, H, W) -> (B, out_ch, 2H, 2W).
    """

    def __init__(self, in_ch: int, out_ch: int, mode: str) -> None:
        super().__init__()
        align = False if mode in ("bicubic", "bilinear") else None
        self.op_list = nn.ModuleList(
            [
                nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False),
                nn.Upsample(scale_factor=2, mode=mode, align_corners=align),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op_list[1](self.op_list[0](x))


def _validate_cfgs(cfgs: list[list[int]]) -> list[int]:
    """Check the block table and return the indices of the blocks ending each of the four stages."""
    if not cfgs or any(len(row) != 6 for row in cfgs):
        raise ValueError("cfgs must be a non-empty list of [k, t, c, SE, HS, s] rows")
    stage_ends = []
    prev_c = cfgs[0][2]
    for idx, (k, t, c, _se, _hs, s) in enumerate(cfgs):
        if k % 2 == 0 or k < 1:
            raise ValueError(f"cfgs row {idx}: kernel size {k} must be odd and positive")
        if t != 2:
            raise ValueError(f"cfgs row {idx}: expansion t={t}, RepViT blocks require t=2")
        if c <= 0 or c % 8:
            raise ValueError(f"cfgs row {idx}: channels {c} must be a positive multiple of 8")
        if s not in (1, 2) or (s == 2) != (c != prev_c):
            raise ValueError(f"cfgs row {idx}: stride must be 2 exactly where the channel count changes")
        if c != prev_c:
            stage_ends.append(idx - 1)
            prev_c = c
    stage_ends.append(len(cfgs) - 1)
    if len(stage_ends) != 4:
        raise ValueError(f"cfgs must describe 4 stages (3 stride-2 rows), got {len(stage_ends)}")
    return stage_ends


class RepViTEncoder(nn.Module):
    """EdgeSAM's RepViT image encoder with neck: (B, 3, S, S) -> (B, out_dim, S/16, S/16).

    Args:
        arch: ``"m1"`` (EdgeSAM), ``"m2"`` or ``"m3"``; ignored when ``cfgs`` is given.
        img_size: nominal input side ``S`` (a multiple of 32); the network is fully convolutional and
            accepts any multiple of 32.
        out_dim: channels of the output embedding (the official model uses 256).
        fuse: EdgeSAM's stage-fusion neck (sum of the stride-16 and upsampled stride-32 stages);
            ``False`` runs the last stage at stride 16 and uses only its output.
        upsample_mode: ``"bicubic"`` (official), ``"bilinear"`` or ``"nearest"`` for the 2x upsampling.
        hires_chans: if > 0, the stride-4 features (end of stage 1) are also projected to this many
            channels and appended to the output space-to-depth: ``(B, out_dim + 16 * hires_chans,
            S/16, S/16)``.
        cfgs: custom block table (rows ``[k, t, c, SE, HS, s]`` as :data:`M1_CFGS`), e.g. for narrower
            or shallower students: four stages, ``t == 2``, channels multiples of 8, stride 2 exactly
            on the first row of stages 2-4.
    """

    def __init__(
        self,
        arch: str = "m1",
        img_size: int = 1024,
        out_dim: int = 256,
        fuse: bool = True,
        upsample_mode: str = "bicubic",
        cfgs: list[list[int]] | None = None,
        hires_chans: int = 0,
    ) -> None:
        super().__init__()
        if cfgs is None:
            if arch not in ARCH_CFGS:
                raise ValueError(f"unknown RepViT arch {arch!r}; expected one of {sorted(ARCH_CFGS)}")
            cfgs = ARCH_CFGS[arch]
        if img_size <= 0 or img_size % 32:
            raise ValueError(f"img_size must be a positive multiple of 32, got {img_size}")
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
        self.cfgs = [list(row) for row in cfgs]
        self.stage_ends = _validate_cfgs(self.cfgs)
        self.img_size = img_size
        self.fuse = fuse

        stem_ch = self.cfgs[0][2]
        layers: list[nn.Module] = [
            nn.Sequential(ConvBN(3, stem_ch // 2, 3, 2, 1), nn.GELU(), ConvBN(stem_ch // 2, stem_ch, 3, 2, 1))
        ]
        in_ch = stem_ch
        last_stage_start = self.stage_ends[2] + 1
        for idx, (k, _t, c, use_se, _hs, s) in enumerate(self.cfgs):
            # Without the fusion neck the last stage keeps stride 16 (EdgeSAM's skip_downsample).
            stride = 1 if (not fuse and idx == last_stage_start) else s
            layers.append(RepViTBlock(in_ch, c, k, bool(use_se), downsample=s == 2, stride=stride))
            in_ch = c
        self.features = nn.ModuleList(layers)

        if fuse:
            self.fuse_stage2 = nn.Conv2d(self.cfgs[self.stage_ends[2]][2], out_dim, kernel_size=1, bias=False)
            self.fuse_stage3 = ConvUpsample(self.cfgs[self.stage_ends[3]][2], out_dim, upsample_mode)
            neck_in = out_dim
        else:
            neck_in = in_ch
        self.neck = make_neck(neck_in, out_dim)
        self.hires = nn.Conv2d(self.cfgs[self.stage_ends[0]][2], hires_chans, 1) if hires_chans else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised image, S a multiple of 32 -> (B, out_dim [+ 16 * hires_chans], S/16, S/16)."""
        check_image(x, 3, multiple=32)
        x = self.features[0](x)
        stage4 = stage16 = x
        for idx, block in enumerate(self.features[1:]):
            x = block(x)
            if idx == self.stage_ends[0]:
                stage4 = x
            if idx == self.stage_ends[2]:
                stage16 = x
        if self.fuse:
            x = self.fuse_stage2(stage16) + self.fuse_stage3(x)
        x = self.neck(x)
        if self.hires is None:
            return x
        return torch.cat([x, F.pixel_unshuffle(self.hires(stage4), 4)], 1)
