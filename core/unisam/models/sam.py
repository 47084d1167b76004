"""The assembled model: image encoder + prompt encoder + mask decoder, built from an :class:`ArchSpec`.

State-dict keys carry the official prefixes ``image_encoder.``, ``prompt_encoder.`` and
``mask_decoder.``; the pixel mean/std buffers are not persistent (as in the official checkpoints).

Port of ``segment_anything/modeling/sam.py`` (Meta, Apache-2.0); :func:`build_sam` takes the place of
``segment_anything/build_sam.py`` and EdgeSAM's / MobileSAM's ``build_sam.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import ArchSpec
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

ENCODERS = ("repvit", "vit", "tiny_vit")


class Sam(nn.Module):
    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        spec: ArchSpec,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.spec = spec
        self.register_buffer("pixel_mean", torch.tensor(spec.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 255] with ``max(H, W) <= image_size`` -> normalised, zero-padded
        ``(B, 3, S, S)``."""
        h, w = images.shape[-2:]
        if max(h, w) > self.image_size:
            raise ValueError(f"image of {h}x{w} is larger than the model input {self.image_size}")
        x = (images - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(B, 3, S, S)`` -> image embeddings ``(B, spec.embedding_chans, S/16, S/16)``."""
        return self.image_encoder(images)

    def forward_decoder(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        num_outputs: int = 3,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompts (differentiable; for inference, training and distillation).

        Args:
            image_embeddings: ``(E, C, h, w)``; E = 1 (shared by all prompts), E = B (one per prompt),
                or any E with ``image_index``.
            point_coords: ``(B, N, 2)`` xy pixels in the model input frame (S-frame, after
                resize-longest-side), boxes as two corner points.
            point_labels: ``(B, N)``: -1 padding, 0 negative, 1 positive, 2/3 box top-left/bottom-right.
                Like SAM's prompt encoder, callers append a padding point when there is no box.
            mask_input: ``(B, 1, 4h, 4w)`` low-resolution mask logits, or None.
            num_outputs: 1 (single-mask output), 3 (multimask outputs) or 4 (all outputs).
            image_index: ``(B,)`` int64, the embedding each prompt refers to.

        Returns:
            Low-resolution mask logits ``(B, K, 4h, 4w)`` and predicted IoU ``(B, K)``, K = num_outputs.
        """
        if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
            raise ValueError(f"point_coords must be (B, N, 2), got {tuple(point_coords.shape)}")
        if point_labels.shape != point_coords.shape[:2]:
            raise ValueError(
                f"point_labels {tuple(point_labels.shape)} must match point_coords {tuple(point_coords.shape[:2])}"
            )
        bs = point_coords.shape[0]
        if image_index is None and image_embeddings.shape[0] not in (1, bs):
            raise ValueError(
                f"{image_embeddings.shape[0]} image embeddings for {bs} prompts: pass image_index"
            )
        keep = self.mask_decoder.select_outputs(num_outputs)
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        if mask_input is None:
            dense = self.prompt_encoder.no_mask_dense()
        else:
            dense = self.prompt_encoder.embed_masks(mask_input)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, image_index
        )
        return masks[:, keep], iou[:, keep]

    def forward(self, images: torch.Tensor, *prompts: torch.Tensor | None, **options) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images ``(E, 3, S, S)``; prompts and options as in :meth:`forward_decoder`."""
        return self.forward_decoder(self.embed_image(images), *prompts, **options)


def build_image_encoder(spec: ArchSpec) -> nn.Module:
    """The image encoder named by ``spec.encoder``, built with ``spec.encoder_kwargs``."""
    kwargs = dict(spec.encoder_kwargs)
    kwargs["img_size"] = spec.image_size
    if spec.hires_chans and spec.encoder != "repvit":
        raise ValueError(f"hires_chans needs the repvit encoder, got {spec.encoder!r}")
    if spec.encoder == "repvit":
        from .repvit import RepViTEncoder

        kwargs.setdefault("out_dim", spec.embed_dim)
        return RepViTEncoder(**kwargs, hires_chans=spec.hires_chans)
    if spec.encoder == "vit":
        from .vit import ViTEncoder

        kwargs.setdefault("out_chans", spec.embed_dim)
        return ViTEncoder(**kwargs)
    if spec.encoder == "tiny_vit":
        from .tiny_vit import TinyViTEncoder

        return TinyViTEncoder(**kwargs)
    raise ValueError(f"unknown encoder {spec.encoder!r}; expected one of {', '.join(ENCODERS)}")


def build_sam(spec: ArchSpec) -> Sam:
    """A randomly initialised model of architecture ``spec`` (load weights with ``load_checkpoint``)."""
    if spec.image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16, got {spec.image_size}")
    grid = (spec.embedding_size, spec.embedding_size)
    prompt_encoder = PromptEncoder(
        embed_dim=spec.embed_dim,
        image_embedding_size=grid,
        input_image_size=(spec.image_size, spec.image_size),
        mask_in_chans=spec.mask_in_chans,
    )
    transformer = TwoWayTransformer(
        depth=spec.decoder_depth,
        embedding_dim=spec.embed_dim,
        num_heads=spec.decoder_heads,
        mlp_dim=spec.decoder_mlp_dim,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=spec.embed_dim,
        transformer=transformer,
        num_multimask_outputs=spec.num_multimask_outputs,
        iou_head_depth=spec.iou_head_depth,
        iou_head_hidden_dim=spec.iou_head_hidden_dim,
        hires_chans=spec.hires_chans,
    )
    return Sam(build_image_encoder(spec), prompt_encoder, mask_decoder, spec)
