"""Export an open_clip CLIP model to the ONNX graphs that :mod:`unisam.runtime.clip` runs.

Needs torch and ``open_clip_torch`` (the ``clip`` extra). Models are built by open_clip's own names
(``open_clip.create_model(arch)``), so what is exported is open_clip's definition, unchanged:

- ``text.onnx``: ``tokens`` int64 ``(N, L)`` -> ``text_embeddings`` ``(N, D)`` (``CLIP.encode_text``);
- ``image.onnx`` (ViT towers): ``image`` float32 ``(N, 3, S, S)`` preprocessed -> ``image_embeddings``
  ``(N, D)`` (``CLIP.encode_image``);
- ``dense.onnx``: ``image`` ``(N, 3, H, W)`` -> ``features`` ``(N, C, H/stride, W/stride)``, the
  tower's features before its pooling; ``head.onnx``: ``pooled`` ``(N, C)`` -> ``embeddings``
  ``(N, D)``, the rest of the tower after pooling. Masked averages of ``features`` through ``head``
  give one embedding per mask from one pass over the image ("dense" scoring).

Towers with dense graphs: timm trunks (ConvNeXt and other CNNs; any ``H, W`` multiple of the
stride; ``head`` = the trunk's norm head + open_clip's projection, so a whole-image average gives
``encode_image`` exactly, and no ``image.onnx`` is written) and open_clip's ``VisionTransformer`` (``H = W = S``; as in MaskCLIP /
ClearCLIP the last block contributes only its attention's value path, without the query-key mixing,
residual or MLP, and ``head`` = ``ln_post`` + ``proj``). Embeddings are returned unnormalised.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.timm_model import TimmModel
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from open_clip.transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

from ..registry import CLIP_FORMAT, CLIP_MERGES_FILE
from ..weights import sha256_file
from .checkpoint import is_torchscript_archive, load_checkpoint



def build_open_clip(arch: str, weights: str | Path | None = None) -> nn.Module:
    """open_clip's model ``arch`` (random weights), then ``weights`` loaded strictly and safely: a
    state dict as open_clip saves it (``.bin`` / ``.pt`` read with ``weights_only=True``, or
    ``.safetensors``), or a TorchScript archive as OpenAI publishes CLIP (``ViT-B-32.pt``; read with
    ``torch.jit.load``, its float16 tensors loaded as float32). OpenAI's models use QuickGELU, so for
    an archive the model is built with it, as ``open_clip.load_openai_model`` builds them. Raises
    ``ValueError`` for an unknown ``arch`` or a file of another layout."""
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    openai = weights is not None and is_torchscript_archive(weights)
    model = open_clip.create_model(arch, pretrained=None, device="cpu", force_quick_gelu=openai)
    if weights is not None:
        what = f"open_clip {arch!r}" + (" with QuickGELU (an OpenAI CLIP archive)" if openai else "")
        load_checkpoint(model, weights, what=what)
    return model.eval()


class _Text(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


class _Image(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image)


class TimmDense(nn.Module):
    """Features of a timm trunk before its global pool: ``(B, C, H/s, W/s)``."""

    def __init__(self, visual: TimmModel) -> None:
        super().__init__()
        self.trunk = visual.trunk

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(image)


class TimmHead(nn.Module):
    """Pooled trunk features ``(N, C)`` -> embeddings ``(N, D)``: the trunk's head (pool of a 1x1 map is
    the identity, then its norm) and open_clip's projection."""

    def __init__(self, visual: TimmModel) -> None:
        super().__init__()
        self.trunk, self.head = visual.trunk, visual.head

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk.forward_head(pooled[:, :, None, None]))


class VitDense(nn.Module):
    """Patch features of open_clip's ``VisionTransformer``: all blocks but the last as trained, then the
    last block's value path only (``ls_1(out_proj(v(ln_1(x))))``): ``(B, width, g, g)``."""

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.visual = visual
        self.grid = visual.grid_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        x = visual._embeds(image)
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        width = x.shape[-1]
        v = F.linear(last.ln_1(x[:, 1:]), last.attn.in_proj_weight[2 * width :], last.attn.in_proj_bias[2 * width :])
        x = last.ls_1(last.attn.out_proj(v))
        return x.transpose(1, 2).reshape(x.shape[0], width, self.grid[0], self.grid[1])


class VitHead(nn.Module):
    """Pooled patch features ``(N, width)`` -> embeddings ``(N, D)``: ``ln_post`` then ``proj``."""

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.visual.ln_post(pooled)
        return x @ self.visual.proj if self.visual.proj is not None else x


def dense_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The dense feature module, its head, and their geometry for ``model``'s image tower."""
    visual = model.visual
    size = _square(get_preprocess(model)["size"])
    if isinstance(visual, TimmModel):
        reduction = visual.trunk.feature_info[-1]["reduction"]
        return TimmDense(visual), TimmHead(visual), {"kind": "timm", "stride": reduction, "fixed_size": None}
    if isinstance(visual, VisionTransformer) and visual.attn_pool is None:
        stride = size // visual.grid_size[0]
        return VitDense(visual), VitHead(visual), {"kind": "vit", "stride": stride, "fixed_size": size}
    raise ValueError(f"dense pooling supports timm and ViT image towers, not {type(visual).__name__}")


def get_preprocess(model: nn.Module) -> dict[str, Any]:
    """open_clip's preprocessing configuration of ``model`` (size, mean, std, interpolation, resize mode)."""
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    cfg.setdefault("interpolation", "bicubic")
    cfg.setdefault("resize_mode", "shortest")
    return cfg


def _square(size: int | tuple[int, int] | list[int]) -> int:
    if isinstance(size, int):
        return size
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"only square CLIP input sizes are supported, got {size}")
    return int(size[0])


def _export(module: nn.Module, args: tuple, path: Path, inputs, outputs, dynamic, opset: int) -> None:
    """TorchScript-based ``torch.onnx.export`` (as for the SAM graphs, see :mod:`unisam.models.export`)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused attention op has no ONNX export
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_clip(model: nn.Module, arch: str, out_dir: str | Path, *, pretrained: str | None = None,
                opset: int = 17) -> Path:
    """Write ``text.onnx``, ``image.onnx``, ``dense.onnx``, ``head.onnx``, the BPE merges file and
    ``model.json`` for the open_clip ``model`` (of architecture ``arch``) into ``out_dir``."""
    tokenizer = open_clip.get_tokenizer(arch)
    if type(tokenizer) is not SimpleTokenizer or tokenizer.reduction_fn is not None:
        raise ValueError(f"{arch!r} does not use CLIP's BPE tokenizer; unisam tokenizes only that one")
    if tokenizer.clean_fn.__name__ != "_clean_lower":
        raise ValueError(f"{arch!r} cleans text with {tokenizer.clean_fn.__name__}; unisam implements 'lower' only")
    cfg = get_preprocess(model)
    if cfg["resize_mode"] not in ("shortest", "squash") or cfg["interpolation"] not in ("bicubic", "bilinear"):
        raise ValueError(f"unsupported preprocessing {cfg['resize_mode']}/{cfg['interpolation']} of {arch!r}")
    size = _square(cfg["size"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dense, head, geometry = dense_parts(model)
    context = int(model.context_length)
    with torch.no_grad():
        tokens = torch.as_tensor(tokenizer(["a photo of a cat", "a dog"]).numpy(), dtype=torch.int64)
        image = torch.zeros(2, 3, size, size)
        embed = model.encode_image(image[:1])
        pooled = dense(image[:1]).mean(dim=(2, 3))
        batch = {0: "n"}
        _export(_Text(model), (tokens,), out / "text.onnx", ["tokens"], ["text_embeddings"],
                {"tokens": batch, "text_embeddings": batch}, opset)
        if geometry["kind"] == "vit":  # a timm tower's encode_image is head(mean(dense)): no graph needed
            _export(_Image(model), (image,), out / "image.onnx", ["image"], ["image_embeddings"],
                    {"image": batch, "image_embeddings": batch}, opset)
            spatial = {"image": batch, "features": batch}
        else:
            spatial = {"image": {0: "n", 2: "h", 3: "w"}, "features": {0: "n", 2: "fh", 3: "fw"}}
        _export(dense, (image,), out / "dense.onnx", ["image"], ["features"], spatial, opset)
        _export(head, (pooled,), out / "head.onnx", ["pooled"], ["embeddings"],
                {"pooled": batch, "embeddings": batch}, opset)
    shutil.copyfile(default_bpe(), out / CLIP_MERGES_FILE)
    meta = {
        "format": CLIP_FORMAT,
        "arch": arch,
        "pretrained": pretrained,
        "embed_dim": int(embed.shape[-1]),
        "image_size": size,
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": cfg["interpolation"],
        "resize_mode": cfg["resize_mode"],
        "context_length": context,
        "logit_scale": float(model.logit_scale.detach().exp()),
        "dense": {**geometry, "channels": int(pooled.shape[-1])},
        "dense_sha256": sha256_file(out / "dense.onnx"),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
