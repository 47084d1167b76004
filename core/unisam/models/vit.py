"""SAM's ViT image encoder (ViT-B/L/H), state-dict compatible with ``ImageEncoderViT``.

A ``(B, 3, S, S)`` normalised image becomes ``(B, out_chans, S/16, S/16)`` features: a 16x16 patch
embedding plus an absolute position embedding, ``depth`` pre-norm transformer blocks (windowed
attention, except global attention at ``global_attn_indexes``), each attention adding decomposed
relative position biases, then a conv neck.

Port of ``segment_anything/modeling/image_encoder.py`` (Meta, Apache-2.0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_image, make_neck


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, C, S, S) -> (B, S/p, S/p, embed_dim) channels-last."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    """Two-layer GELU MLP on the last axis: (..., dim) -> (..., dim)."""

    def __init__(self, embedding_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def relative_position_index(size: int) -> torch.Tensor:
    """(size, size) int64 table ``q - k + size - 1`` indexing a ``(2 * size - 1, C)`` embedding."""
    coords = torch.arange(size)
    return coords[:, None] - coords[None, :] + (size - 1)


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, dim)`` grid with decomposed rel-pos biases.

    ``size`` is the (square) grid side the attention sees: the window size for windowed blocks or
    the full token grid for global ones; ``rel_pos_h``/``rel_pos_w`` are ``(2 * size - 1, head_dim)``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.size = size
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
            self.register_buffer("rel_index", relative_position_index(size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, size, size, dim) -> (B, size, size, dim)."""
        batch, h, w, dim = x.shape
        qkv = self.qkv(x).reshape(batch, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, h * w, -1).unbind(0)  # (B*nH, N, hd) each
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nH, N, N)
        if self.use_rel_pos:
            r_q = q.reshape(batch * self.num_heads, h, w, -1)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, self.rel_pos_h[self.rel_index])
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, self.rel_pos_w[self.rel_index])
            attn = attn.view(-1, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
            attn = attn.view(-1, h * w, h * w)
        out = attn.softmax(dim=-1) @ v  # (B*nH, N, hd)
        out = out.view(batch, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(batch, h, w, dim)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block on a ``(B, G, G, dim)`` token grid; windowed if ``window_size > 0``.

    Windowed blocks zero-pad the grid to a multiple of ``window_size``, attend inside each window and
    crop back.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        grid_size: int,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, window_size or grid_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size
        self.grid_size = grid_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G, G, dim) -> (B, G, G, dim)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            x = self._windowed_attention(x)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        ws, grid = self.window_size, self.grid_size
        pad = (ws - grid % ws) % ws
        padded = grid + pad
        n = padded // ws
        dim = x.shape[-1]
        x = F.pad(x, (0, 0, 0, pad, 0, pad))  # (B, P, P, dim)
        windows = x.view(-1, n, ws, n, ws, dim).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, dim)
        windows = self.attn(windows)  # (B * n * n, ws, ws, dim)
        x = windows.view(-1, n, n, ws, ws, dim).permute(0, 1, 3, 2, 4, 5).reshape(-1, padded, padded, dim)
        return x[:, :grid, :grid, :]


class ViTEncoder(nn.Module):
    """SAM's ViT image encoder: ``(B, in_chans, S, S)`` -> ``(B, out_chans, S/16, S/16)``.

    ``S`` must equal ``img_size`` (the absolute position embedding is ``(1, S/p, S/p, embed_dim)``).
    ViT-B: defaults; ViT-L: ``embed_dim=1024, depth=24, num_heads=16,
    global_attn_indexes=(5, 11, 17, 23)``; ViT-H: ``embed_dim=1280, depth=32, num_heads=16,
    global_attn_indexes=(7, 15, 23, 31)``.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.in_chans = in_chans
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                use_rel_pos,
                0 if i in global_attn_indexes else window_size,
                grid,
            )
            for i in range(depth)
        )
        self.neck = make_neck(embed_dim, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, img_size, img_size) normalised image -> (B, out_chans, img_size/16, img_size/16)."""
        check_image(x, self.in_chans, self.img_size)
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
