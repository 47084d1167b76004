"""SAM's mask decoder: output tokens + prompt tokens through the two-way transformer, then masks.

Parameter names and shapes match ``segment_anything`` / EdgeSAM (``mask_decoder.*`` keys). The decoder
always computes ``num_multimask_outputs + 1`` masks: index 0 is the single-mask output, 1.. the
multimask outputs; ``select_outputs`` picks 1, 3 (multimask) or 4 (all) of them as EdgeSAM does.

With ``hires_chans > 0`` (unisam's own small models) the embedding carries stride-4 encoder features
after its first ``transformer_dim`` channels (space-to-depth, see ``ArchSpec``). They go through a
3x3 convolution once per image and are added to each prompt's upscaled features, followed by a
residual per-pixel mix, so the masks follow image edges at stride 4 instead of being interpolated
from the stride-16 tokens.

Port of ``segment_anything/modeling/mask_decoder.py`` (Meta, Apache-2.0), with the output selection
of EdgeSAM's ``edge_sam/modeling/mask_decoder.py``; the high-resolution path is unisam's own.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import LayerNorm2d
from .transformer import TwoWayTransformer


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MaskDecoder(nn.Module):
    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        hires_chans: int = 0,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        self.hires_chans = hires_chans
        if hires_chans:
            self.hires_conv = nn.Conv2d(hires_chans, transformer_dim // 8, kernel_size=3, padding=1)
            self.hires_mix = nn.Conv2d(transformer_dim // 8, transformer_dim // 8, kernel_size=1)
            # Zero-initialised, the path starts as a no-op and grows in with training: with random
            # weights its prompt-independent features swamp the masks and training from scratch
            # stalls on the plateau where every prompt gives the same mask.
            for layer in (self.hires_conv, self.hires_mix):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def split_embeddings(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(E, C [+ 16 * hires_chans], h, w)`` -> tokens ``(E, C, h, w)`` and high-res features
        ``(E, C/8, 4h, 4w)`` after their convolution (None without the high-res path)."""
        c = self.transformer_dim
        if image_embeddings.shape[1] != c + 16 * self.hires_chans:
            raise ValueError(
                f"image embeddings have {image_embeddings.shape[1]} channels, the decoder expects "
                f"{c + 16 * self.hires_chans}"
            )
        if not self.hires_chans:
            return image_embeddings, None
        hires = F.pixel_shuffle(image_embeddings[:, c:], 4)
        return image_embeddings[:, :c], F.gelu(self.hires_conv(hires))

    def fuse_hires(self, upscaled: torch.Tensor, hires: torch.Tensor | None) -> torch.Tensor:
        """Upscaled features ``(B, C/8, 4h, 4w)`` + high-res features ``(B or 1, C/8, 4h, 4w)``."""
        if hires is None:
            return upscaled
        x = upscaled + hires
        return x + F.gelu(self.hires_mix(x))

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All outputs for B prompts.

        ``image_embeddings (B or 1, C [+ 16 * hires_chans], h, w)``, ``image_pe (1, C, h, w)``,
        ``sparse_prompt_embeddings (B, T, C)``, ``dense_prompt_embeddings (B or 1, C, h or 1, w or 1)`` -> mask logits
        ``(B, K, 4h, 4w)`` and predicted IoU ``(B, K)`` with ``K = num_multimask_outputs + 1``.
        ``image_index (B,)`` picks each prompt's embedding from E of them (after the high-res
        convolution, so that runs once per embedding, not once per prompt).
        """
        bs = sparse_prompt_embeddings.shape[0]
        h, w = image_embeddings.shape[-2:]
        image_embeddings, hires = self.split_embeddings(image_embeddings)
        if image_index is not None:
            image_embeddings = image_embeddings[image_index]
            hires = None if hires is None else hires[image_index]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(bs, -1, -1), sparse_prompt_embeddings], dim=1)

        src = image_embeddings + dense_prompt_embeddings
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]

        src = src.transpose(1, 2).unflatten(2, (h, w)).expand(bs, -1, -1, -1)
        upscaled = self.fuse_hires(self.output_upscaling(src), hires)  # (B, C/8, 4h, 4w)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, K, C/8)
        masks = (hyper_in @ upscaled.flatten(2)).unflatten(2, upscaled.shape[-2:])
        return masks, self.iou_prediction_head(iou_token_out)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        num_outputs: int = 3,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`predict_masks`, keeping ``num_outputs`` (1, 3 or 4) of the outputs."""
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        keep = self.select_outputs(num_outputs)
        return masks[:, keep], iou[:, keep]

    def select_outputs(self, num_outputs: int) -> slice:
        """Output indices for 1 (single mask), ``num_multimask_outputs`` (multimask) or all outputs."""
        if num_outputs == 1:
            return slice(0, 1)
        if num_outputs == self.num_multimask_outputs:
            return slice(1, None)
        if num_outputs == self.num_mask_tokens:
            return slice(0, None)
        raise ValueError(
            f"num_outputs must be 1, {self.num_multimask_outputs} or {self.num_mask_tokens}, got {num_outputs}"
        )
