"""MobileSAM's TinyViT-5M image encoder, state-dict compatible with ``mobile_sam``'s ``TinyViT``.

A ``(B, 3, S, S)`` normalised image becomes ``(B, 256, S/16, S/16)`` features: a conv stem (stride 4),
a stage of MBConv blocks, three stages of windowed-attention blocks (stride 8, 16, 16: the last patch
merging keeps the resolution), then SAM's conv neck. The checkpoint also carries TinyViT's ImageNet
head (``norm_head``, ``head``); it is kept so a strict load of ``image_encoder.*`` works, and unused.

Port of MobileSAM's ``mobile_sam/modeling/tiny_vit_sam.py`` (MobileSAM, Apache-2.0; TinyViT by
Microsoft).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .repvit import ConvBN
from .common import check_image, make_neck

EMBED_DIMS = (64, 128, 160, 320)
DEPTHS = (2, 2, 6, 2)
NUM_HEADS = (2, 4, 5, 10)
WINDOW_SIZES = (7, 7, 14, 7)
MLP_RATIO = 4.0
MBCONV_EXPAND = 4
NUM_CLASSES = 1000
OUT_DIM = 256


class PatchEmbed(nn.Module):
    """Stem: two stride-2 3x3 ConvBNs with a GELU between, (B, 3, S, S) -> (B, dim, S/4, S/4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2, 3, 2, 1), nn.GELU(), ConvBN(dim // 2, dim, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, GELUs, residual, GELU.

    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.conv1 = ConvBN(channels, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, channels, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, GELU, 3x3 depthwise conv (``stride``), GELU, 1x1 conv.

    (B, C, H, W) -> (B, C', H / stride, W / stride).
    """

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class ConvLayer(nn.Module):
    """Stage 1: MBConv blocks then patch merging, (B, C, H, W) -> (B, C', H/2, W/2)."""

    def __init__(self, dim: int, depth: int, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, MBCONV_EXPAND) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


def attention_offset_index(window: int) -> tuple[torch.Tensor, int]:
    """Index of each (query, key) pair's ``(|dy|, |dx|)`` offset in a ``window x window`` window.

    Returns a ``(window**2, window**2)`` int64 table and the number of distinct offsets, numbered in
    order of first appearance (TinyViT's layout of ``attention_biases``).
    """
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(offset, len(offsets)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n), len(offsets)


class Attention(nn.Module):
    """Pre-norm multi-head attention with learned per-head offset biases, (B, N, dim) -> (B, N, dim).

    ``N`` must be ``window**2``; ``attention_biases`` is ``(num_heads, number of distinct offsets)``.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        index, num_offsets = attention_offset_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)  # (B, nH, N, hd) each
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (nH, N, N)
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, n, dim)
        return self.proj(out)


class Mlp(nn.Module):
    """Pre-norm two-layer GELU MLP on the last axis, (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (residual), 3x3 depthwise ConvBN, MLP (residual) on a ``grid x grid`` map.

    The map is zero-padded to a multiple of ``window`` for attention and cropped back.
    (B, grid*grid, dim) tokens -> same.
    """

    def __init__(self, dim: int, num_heads: int, window: int, grid: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.window = window
        self.grid = grid
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * MLP_RATIO))
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, dim = x.shape
        ws, grid = self.window, self.grid
        if grid == ws:
            attn = self.attn(x)
        else:
            pad = (ws - grid % ws) % ws
            padded = grid + pad
            nw = padded // ws
            y = F.pad(x.view(batch, grid, grid, dim), (0, 0, 0, pad, 0, pad))
            y = y.view(batch, nw, ws, nw, ws, dim).transpose(2, 3).reshape(batch * nw * nw, ws * ws, dim)
            y = self.attn(y)
            y = y.view(batch, nw, nw, ws, ws, dim).transpose(2, 3).reshape(batch, padded, padded, dim)
            attn = y[:, :grid, :grid].reshape(batch, n, dim)
        x = x + attn
        x = self.local_conv(x.transpose(1, 2).reshape(batch, dim, grid, grid))
        x = x.view(batch, dim, n).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Stages 2-4: TinyViT blocks, then optional patch merging.

    (B, C, grid, grid) -> (B, C', grid / stride, grid / stride) where stride is the merging's stride
    (1 without merging).
    """

    def __init__(
        self, dim: int, depth: int, num_heads: int, window: int, grid: int, out_dim: int, merge_stride: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, grid) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, merge_stride) if merge_stride else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, dim, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        x = x.transpose(1, 2).reshape(batch, dim, h, w)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class TinyViTEncoder(nn.Module):
    """MobileSAM's TinyViT-5M image encoder: (B, 3, S, S) -> (B, 256, S/16, S/16).

    ``S`` must equal ``img_size`` (a multiple of 16; the attention grids are fixed at build time).
    """

    def __init__(self, img_size: int = 1024) -> None:
        super().__init__()
        if img_size <= 0 or img_size % 16:
            raise ValueError(f"img_size must be a positive multiple of 16, got {img_size}")
        self.img_size = img_size
        c0 = EMBED_DIMS[0]
        self.patch_embed = PatchEmbed(c0)
        grids = (img_size // 4, img_size // 8, img_size // 16, img_size // 16)
        merge_strides = (2, 2, 1, 0)  # stage 3 -> 4 keeps the resolution; stage 4 has no merging
        layers: list[nn.Module] = [ConvLayer(c0, DEPTHS[0], EMBED_DIMS[1])]
        for i in range(1, 4):
            out_dim = EMBED_DIMS[min(i + 1, 3)]
            layers.append(
                BasicLayer(EMBED_DIMS[i], DEPTHS[i], NUM_HEADS[i], WINDOW_SIZES[i], grids[i], out_dim, merge_strides[i])
            )
        self.layers = nn.ModuleList(layers)
        self.norm_head = nn.LayerNorm(EMBED_DIMS[-1])
        self.head = nn.Linear(EMBED_DIMS[-1], NUM_CLASSES)
        self.neck = make_neck(EMBED_DIMS[-1], OUT_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, img_size, img_size) normalised image -> (B, 256, img_size/16, img_size/16)."""
        check_image(x, 3, self.img_size)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
