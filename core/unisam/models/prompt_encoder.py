"""SAM's prompt encoder: points, boxes and low-resolution masks to decoder tokens.

Parameter names and shapes match ``segment_anything`` / EdgeSAM / MobileSAM checkpoints
(``prompt_encoder.*`` keys).

Port of ``segment_anything/modeling/prompt_encoder.py`` (Meta, Apache-2.0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

# Point labels: -1 padding ("not a point"), 0 negative, 1 positive, 2 box top-left, 3 box bottom-right.
PAD_LABEL = -1
BOX_LABELS = (2.0, 3.0)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of 2-D positions: ``[sin(2πp'G), cos(2πp'G)]`` with ``p' = 2p - 1``."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` xy in [0, 1] -> ``(..., 2 * num_pos_feats)``."""
        proj = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the pixel centres of an ``(h, w)`` grid -> ``(2 * num_pos_feats, h, w)``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2)
        return self.encode(xy).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Encodes points/boxes into sparse tokens and a mask prompt into a dense embedding.

    Coordinates are pixels of the padded model input (``input_image_size``, the "S-frame").
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, ``(1, embed_dim, h, w)``."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def label_table(self) -> torch.Tensor:
        """Embedding added per label ``-1..3`` (row ``label + 1``), ``(5, embed_dim)``."""
        rows = [self.not_a_point_embed.weight] + [e.weight for e in self.point_embeddings]
        return torch.cat(rows, dim=0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, N, 2)`` xy pixels (S-frame) and ``(B, N)`` labels in {-1, 0, 1, 2, 3} -> ``(B, N, C)``.

        Padding points (label -1) carry only the "not a point" embedding; their coordinates are ignored.
        """
        h, w = self.input_image_size
        scale = coords.new_tensor([1.0 / w, 1.0 / h])
        pe = self.pe_layer.encode((coords + 0.5) * scale)
        is_point = (labels != PAD_LABEL).unsqueeze(-1).to(pe.dtype)
        index = (labels + 1).long()
        return pe * is_point + self.label_table()[index]

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 4h, 4w)`` mask logits -> ``(B, C, h, w)``."""
        return self.mask_downscaling(masks)

    def no_mask_dense(self) -> torch.Tensor:
        """Dense embedding used without a mask prompt, ``(1, C, 1, 1)`` (broadcasts over the grid)."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """segment_anything's interface: points ``((B,N,2), (B,N))``, boxes ``(B,4)`` xyxy, masks ``(B,1,4h,4w)``.

        Returns sparse tokens ``(B, T, C)`` and dense embeddings ``(B, C, h, w)``. As in SAM, a padding
        point is appended to the points when no box is given.
        """
        coords, labels = _merge_prompts(points, boxes)
        bs = coords.shape[0] if coords is not None else (masks.shape[0] if masks is not None else 1)
        if coords is None:
            sparse = self.no_mask_embed.weight.new_zeros((bs, 0, self.embed_dim))
        else:
            sparse = self.embed_points(coords, labels)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = self.no_mask_dense().expand(bs, -1, *self.image_embedding_size)
        return sparse, dense


def _merge_prompts(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Points and boxes as one labelled point set ``(B, T, 2)``, ``(B, T)`` in SAM's token order."""
    coords, labels = [], []
    if points is not None:
        pts, lbl = points
        coords.append(pts)
        labels.append(lbl.to(pts.dtype))
        if boxes is None:
            coords.append(pts.new_zeros(pts.shape[0], 1, 2))
            labels.append(pts.new_full((pts.shape[0], 1), float(PAD_LABEL)))
    if boxes is not None:
        coords.append(boxes.reshape(-1, 2, 2))
        labels.append(boxes.new_tensor(BOX_LABELS).expand(boxes.shape[0], 2))
    if not coords:
        return None, None
    return torch.cat(coords, dim=1), torch.cat(labels, dim=1)
