"""Export a :class:`Sam` to ONNX: ``encoder.onnx``, ``decoder.onnx`` and ``model.json``.

Encoder graph: ``image`` float32 ``(1, 3, S, S)`` (normalised, zero-padded) -> ``image_embeddings``
``(1, C, S/16, S/16)``; exported after :func:`fuse_for_inference` (BatchNorms folded, RepViT branches
merged).

Decoder graph (per-click hot path), SAM-ONNX-like: ``image_embeddings (1, C, h, w)``, ``point_coords
(B, N, 2)`` S-frame pixels, ``point_labels (B, N)`` (-1 padding, 0 negative, 1 positive, 2/3 box
corners), ``mask_input (B, 1, 4h, 4w)``, ``has_mask_input (B,)`` -> ``iou_predictions (B, K)`` and
``low_res_masks (B, K, 4h, 4w)`` with all ``K = num_multimask_outputs + 1`` outputs (index 0: the
single-mask output). B and N are dynamic. Callers append a padding point when there is no box.

:class:`DecoderGraph` computes the same function as :meth:`Sam.forward_decoder` but arranged for CPU
inference; see its docstring for the rewrites (all exact up to float rounding).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import INSTANCE_HEAD_FILE, ONNX_FORMAT, ArchSpec, read_export
from ..weights import sha256_file
from .fuse import fuse_for_inference
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import Attention

ENCODER_INPUTS = ["image"]
ENCODER_OUTPUTS = ["image_embeddings"]
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["iou_predictions", "low_res_masks"]


@dataclass(frozen=True)
class ExportedPaths:
    encoder: Path
    decoder: Path
    config: Path


def _per_head(linear: nn.Linear, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``C -> D`` linear layer as per-head weights ``(heads, C, D/heads)``, biases ``(heads, 1, D/heads)``."""
    weight = linear.weight.t().unflatten(1, (num_heads, -1)).transpose(0, 1)
    return weight, linear.bias.reshape(num_heads, 1, -1)


def _tokens_to_image(
    attn: Attention, q_tokens: torch.Tensor, k_image: torch.Tensor, v_image: torch.Tensor
) -> torch.Tensor:
    """``attn(q_tokens, k_image, v_image)`` without projecting the image tokens.

    ``q_tokens (B, T, C)``, ``k_image, v_image (B, HW, C)`` -> ``(B, T, C)``. The key projection is
    folded into the queries (``(q Wq_h) Wk_h^T`` per head; the key bias adds a per-row constant that
    softmax ignores) and the value projection is applied after attention (rows of softmax sum to 1):
    cost ``O(HW * heads * T * C)`` instead of ``O(HW * C * D)``, a win while ``heads * T < D``.
    """
    heads = attn.num_heads
    wk, _ = _per_head(attn.k_proj, heads)
    wv, bv = _per_head(attn.v_proj, heads)
    scale = 1.0 / math.sqrt(wk.shape[-1])
    q = (attn.q_proj(q_tokens) * scale).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, heads, T, d)
    q = (q @ wk.transpose(1, 2)).flatten(1, 2)  # (B, heads*T, C)
    probs = (q @ k_image.transpose(1, 2)).softmax(dim=-1)  # (B, heads*T, HW)
    ctx = (probs @ v_image).unflatten(1, (heads, -1))  # (B, heads, T, C)
    out = ctx @ wv + bv  # (B, heads, T, d)
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def _image_to_tokens(
    attn: Attention, q_image: torch.Tensor, k_tokens: torch.Tensor, v_tokens: torch.Tensor
) -> torch.Tensor:
    """``attn(q_image, k_tokens, v_tokens)`` without projecting the image tokens.

    ``q_image (B, HW, C)``, ``k_tokens, v_tokens (B, T, C)`` -> ``(B, HW, C)``. The query projection is
    folded into the keys (``Wq_h k_h^T``, plus the query bias as a per-token logit offset) and the
    output projection into the values (``v_h Wo_h``).
    """
    heads = attn.num_heads
    wq, bq = _per_head(attn.q_proj, heads)
    wo = attn.out_proj.weight.t().unflatten(0, (heads, -1))  # (heads, d, C)
    scale = 1.0 / math.sqrt(wq.shape[-1])
    k = (attn.k_proj(k_tokens) * scale).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, heads, T, d)
    kt = k.transpose(2, 3)  # (B, heads, d, T)
    a = (wq @ kt).permute(0, 2, 1, 3).flatten(2)  # (B, C, heads*T)
    offset = (bq @ kt).flatten(1).unsqueeze(1)  # (B, 1, heads*T)
    logits = q_image @ a + offset  # (B, HW, heads*T)
    probs = logits.unflatten(-1, (heads, -1)).softmax(dim=-1).flatten(2)
    v = attn.v_proj(v_tokens).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, heads, T, d)
    # each head's probabilities sum to 1, so adding bias / heads to every row adds the output bias
    return probs @ ((v @ wo).flatten(1, 2) + attn.out_proj.bias / heads)


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder as exported to ONNX; same outputs as ``Sam.forward_decoder(...,
    num_outputs=K)`` with ``mask_input`` used where ``has_mask_input`` is 1.

    Rewrites for CPU speed: image-side tensors stay channel-last ``(B, HW, C)`` throughout; the dense
    positional encoding is a constant; attention between the few prompt tokens and the many image
    tokens never projects the image tokens (see :func:`_tokens_to_image`, :func:`_image_to_tokens`);
    the stride-2 2x2 (transposed) convolutions of the mask downscaling and output upscaling are
    matrix products on pixel blocks, with their LayerNorm2d as plain LayerNorms.

    The attention rewrite pays while the decoder sees fewer than ``attention width / heads`` (16 for
    SAM) tokens, i.e. up to 11 prompt points including padding and box corners; interactive clicks
    and grid prompts stay far below that.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.prompt_encoder: PromptEncoder = model.prompt_encoder
        self.mask_decoder: MaskDecoder = model.mask_decoder
        dense_pe = model.prompt_encoder.get_dense_pe().detach()
        self.register_buffer("key_pe", dense_pe.flatten(2).transpose(1, 2).contiguous())

    def _mask_features(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 4h, 4w)`` -> ``(B, hw, C2)``, the mask downscaling before its last 1x1 convolution.

        Each 4x4 pixel block maps to one embedding position, so both 2x2 stride-2 convolutions are
        matrix products on the pixels of a block.
        """
        conv1, norm1, _, conv2, norm2, _, _ = self.prompt_encoder.mask_downscaling
        h, w = self.prompt_encoder.image_embedding_size
        # pixel (4i + 2a + c, 4j + 2b + d) -> [i*w + j, (a, b), (c, d)]
        x = masks.reshape(-1, h, 2, 2, w, 2, 2).permute(0, 1, 4, 2, 5, 3, 6).reshape(-1, h * w, 4, 4)
        x = x @ conv1.weight.flatten(1).t() + conv1.bias  # (B, hw, 4, C1)
        x = F.gelu(F.layer_norm(x, norm1.weight.shape, norm1.weight, norm1.bias, norm1.eps))
        x = x.flatten(2) @ conv2.weight.permute(2, 3, 1, 0).flatten(0, 2) + conv2.bias  # (B, hw, C2)
        return F.gelu(F.layer_norm(x, norm2.weight.shape, norm2.weight, norm2.bias, norm2.eps))

    def _upscale(self, keys: torch.Tensor) -> torch.Tensor:
        """Image tokens ``(B, hw, C)`` -> upscaled features ``(B, hw * 16, C/8)``, pixel order
        ``[i, j, (a, b), (c, d)]`` for output pixel ``(4i + 2a + c, 4j + 2b + d)``."""
        deconv1, norm, _, deconv2, _ = self.mask_decoder.output_upscaling
        c1, c2 = deconv1.out_channels, deconv2.out_channels
        w1 = deconv1.weight.permute(0, 2, 3, 1).flatten(1)  # (C, 4*C1), columns (a, b, channel)
        x = torch.addmm(deconv1.bias.repeat(4), keys.flatten(0, 1), w1).unflatten(-1, (4, c1))
        x = F.gelu(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps)).flatten(0, 1)
        w2 = deconv2.weight.permute(0, 2, 3, 1).flatten(1)  # (C1, 4*C2)
        x = F.gelu(torch.addmm(deconv2.bias.repeat(4), x, w2))
        return x.reshape(keys.shape[0], -1, c2)

    def _split(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embedding ``(1, C [+ 16 * hires_chans], h, w)`` -> tokens ``(1, C, h, w)`` and the high-res
        features after their convolution, channel-last in :meth:`_upscale`'s pixel order
        ``(1, hw * 16, C/8)`` (None without the high-res path)."""
        decoder = self.mask_decoder
        tokens, hires = decoder.split_embeddings(image_embeddings)
        if hires is None:
            return tokens, None
        _, c2, hh, ww = hires.shape  # pixel (4i + 2a + c, 4j + 2b + d) -> [i, j, (a, b), (c, d)]
        hires = hires.reshape(1, c2, hh // 4, 2, 2, ww // 4, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
        return tokens, hires.reshape(1, -1, c2)

    def _fuse_hires(self, upscaled: torch.Tensor, hires: torch.Tensor | None) -> torch.Tensor:
        """:meth:`MaskDecoder.fuse_hires` on channel-last features ``(B, hw * 16, C/8)``."""
        if hires is None:
            return upscaled
        mix = self.mask_decoder.hires_mix
        x = upscaled + hires
        return x + F.gelu(x @ mix.weight.flatten(1).t() + mix.bias)

    def _transformer(self, image: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-way transformer on channel-last image tokens ``(B, hw, C)`` and tokens ``(B, T, C)``: the
        steps of ``TwoWayAttentionBlock.forward`` (transformer.py) with the token-to-image attention's
        projections folded into the prompt side (:func:`_tokens_to_image`)."""
        transformer = self.mask_decoder.transformer
        queries, keys = tokens, image
        for layer in transformer.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + tokens
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)
            keys_pe = keys + self.key_pe
            attn_out = _tokens_to_image(layer.cross_attn_token_to_image, queries + tokens, keys_pe, keys)
            queries = layer.norm2(queries + attn_out)
            queries = layer.norm3(queries + layer.mlp(queries))
            attn_out = _image_to_tokens(layer.cross_attn_image_to_token, keys_pe, queries + tokens, queries)
            keys = layer.norm4(keys + attn_out)
        final = _tokens_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + self.key_pe, keys)
        return transformer.norm_final_attn(queries + final), keys

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the module docstring for shapes; returns ``(iou_predictions, low_res_masks)``."""
        decoder = self.mask_decoder
        h, w = self.prompt_encoder.image_embedding_size
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        bs = sparse.shape[0]
        # image + dense prompt embedding, channel-last (B, hw, C): the no-mask embedding, plus
        # has_mask_input * (mask embedding - no-mask embedding)
        conv3 = self.prompt_encoder.mask_downscaling[-1]
        no_mask = self.prompt_encoder.no_mask_embed.weight
        has = has_mask_input.reshape(-1, 1, 1)
        image_embeddings, hires = self._split(image_embeddings)
        image = image_embeddings.flatten(2).transpose(1, 2) + (no_mask + has * (conv3.bias - no_mask))
        image = image + (has * self._mask_features(mask_input)) @ conv3.weight.flatten(1).t()

        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(bs, -1, -1), sparse], dim=1)
        queries, keys = self._transformer(image, tokens)

        hyper = torch.stack(
            [mlp(queries[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )  # (B, K, C/8)
        masks = hyper @ self._fuse_hires(self._upscale(keys), hires).transpose(1, 2)  # (B, K, hw * 16)
        masks = masks.reshape(bs, -1, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        masks = masks.reshape(bs, -1, 4 * h, 4 * w)
        return decoder.iou_prediction_head(queries[:, 0]), masks


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``).

    The dynamo exporter of torch 2.13 cannot produce opset 17 here (its opset-18 graph fails to
    down-convert), and at opsets 18/20 its decoder graph ran slower in onnxruntime (GELU and several
    reshapes left unfused) while taking ~15 s instead of ~1 s to export.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
            output_names=outputs, dynamic_axes=dynamic or None, do_constant_folding=True,
        )


def export_onnx(model: Sam, out_dir: str | Path, *, opset: int = 17, fuse: bool = True) -> ExportedPaths:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``model.json`` for ``model`` into ``out_dir``.

    ``fuse`` applies :func:`~unisam.models.fuse.fuse_for_inference` to the image encoder first.
    ``model.json`` holds ``model.spec.to_dict()``, ``"format"`` and the sha256 of both graphs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = model.spec
    paths = ExportedPaths(out_dir / "encoder.onnx", out_dir / "decoder.onnx", out_dir / "model.json")
    was_training = model.training
    model.eval()
    encoder = fuse_for_inference(model.image_encoder) if fuse else model.image_encoder
    decoder = DecoderGraph(model)
    try:
        _export_graphs(encoder, decoder, spec, paths, opset)
    finally:
        model.train(was_training)

    config = spec.to_dict() | {
        "format": ONNX_FORMAT,
        "encoder_sha256": sha256_file(paths.encoder),
        "decoder_sha256": sha256_file(paths.decoder),
    }
    paths.config.write_text(json.dumps(config, indent=2) + "\n")
    return paths


def _export_graphs(
    encoder: nn.Module, decoder: DecoderGraph, spec: ArchSpec, paths: ExportedPaths, opset: int
) -> None:
    """Trace both graphs with example inputs (2 prompts of 3 points) and dynamic prompt axes."""
    size, grid = spec.image_size, spec.embedding_size
    with torch.no_grad():
        _export(encoder, (torch.zeros(1, 3, size, size),), paths.encoder, ENCODER_INPUTS, ENCODER_OUTPUTS, {}, opset)
        example = (
            torch.zeros(1, spec.embedding_chans, grid, grid),
            torch.zeros(2, 3, 2),
            torch.ones(2, 3),
            torch.zeros(2, 1, 4 * grid, 4 * grid),
            torch.zeros(2),
        )
        prompt_axes = {0: "num_prompts", 1: "num_points"}
        dynamic = {
            "point_coords": prompt_axes,
            "point_labels": prompt_axes,
            "mask_input": {0: "num_prompts"},
            "has_mask_input": {0: "num_prompts"},
            "iou_predictions": {0: "num_prompts"},
            "low_res_masks": {0: "num_prompts"},
        }
        _export(decoder, example, paths.decoder, DECODER_INPUTS, DECODER_OUTPUTS, dynamic, opset)



def export_instance_head(
    head: nn.Module, out_dir: str | Path, *, opset: int = 17, overwrite: bool = False, info: dict | None = None
) -> Path:
    """Write ``head`` (:class:`~unisam.models.instance_head.InstanceHead`) as ``instances.onnx`` into the
    export folder ``out_dir`` (one written by :func:`export_onnx`) and its sha256 as ``instances_sha256``
    into ``model.json``. Graph: ``image_embeddings`` ``(1, C, S/16, S/16)`` -> ``maps`` ``(1, 2, S/4,
    S/4)`` logits. ``info`` (e.g. how the head was trained) goes into ``model.json`` as ``instance_head``.
    An existing head is replaced only with ``overwrite``. Returns the file's path."""
    out_dir = Path(out_dir)
    spec, meta = read_export(out_dir)
    path = out_dir / INSTANCE_HEAD_FILE
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    side = spec.embedding_size
    was_training = head.training
    head.eval()
    try:
        _export(head, (torch.zeros(1, spec.embedding_chans, side, side),), path, ["image_embeddings"], ["maps"], {}, opset)
    finally:
        head.train(was_training)
    meta["instances_sha256"] = sha256_file(path)
    if info is not None:
        meta["instance_head"] = info
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path
