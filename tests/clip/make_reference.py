"""open_clip's own answers, for tests/core/test_label_clip.py to compare unisam's ONNX path against.

Runs in the CLIP virtualenv (torch + open_clip, built by .ci/setup-clip.sh), never in the project venv:
    .venv-clip/bin/python tests/clip/make_reference.py OUT_DIR

For each architecture (one ViT, one ConvNeXt) it builds the open_clip model with seeded random
weights, saves its state dict as open_clip users do (``torch.save(model.state_dict())``), and writes
what open_clip computes directly: token ids, L2-normalised ``encode_text`` of some names and
``encode_image`` (open_clip's own preprocess transform) of some images, and the dense building
block (features of the tower before pooling, averaged over whole feature cells, through the rest of
the tower). Then ``unisam.load_label_model(arch, weights=state_dict)`` exports it into
``OUT_DIR/cache`` (UNISAM_CACHE_DIR), the path a user takes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.timm_model import TimmModel
from PIL import Image
from torch.nn import functional as F

ARCHS = ("ViT-S-32", "convnext_tiny")
NAMES = [
    "cat", "a photo of a dog", "Zürich tram", "tv, television", "naïve café &amp; bar", "日本語", "emoji 🐱",
    "it's a 3.14 m ring", "x" * 400,
]
DENSE_SIZE = {"ViT-S-32": 224, "convnext_tiny": 448}  # unisam's dense input side for these two


def images(rng: np.random.Generator) -> list[np.ndarray]:
    """Smooth random RGB images of several shapes (smooth so that resizing matters, as in photos)."""
    out = []
    for h, w in [(180, 260), (300, 200), (224, 224), (97, 131)]:
        small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)))
    return out


def cell_masks(rng: np.random.Generator, grid: int, cell: int, n: int) -> np.ndarray:
    """``(n, grid*cell, grid*cell)`` bool masks made of whole feature cells (random rectangles)."""
    masks = np.zeros((n, grid * cell, grid * cell), bool)
    for m in masks:
        y0, x0 = rng.integers(0, grid - 1, 2)
        y1, x1 = y0 + rng.integers(1, grid - y0 + 1), x0 + rng.integers(1, grid - x0 + 1)
        m[y0 * cell : y1 * cell, x0 * cell : x1 * cell] = True
    return masks


def dense_reference(model: torch.nn.Module, canvas: torch.Tensor, masks: np.ndarray, cell: int) -> np.ndarray:
    """Embeddings of cell-aligned masks, computed from open_clip's modules: trunk features averaged over
    the cells each mask covers, then the trunk's head and open_clip's projection (timm), or for a ViT
    the last block's value path averaged, then ln_post and proj."""
    visual = model.visual
    if isinstance(visual, TimmModel):
        features = visual.trunk.forward_features(canvas)[0]  # (C, g, g)
    else:
        x = visual.ln_pre(
            torch.cat([visual.class_embedding.expand(1, 1, -1), visual.conv1(canvas).flatten(2).transpose(1, 2)], 1)
            + visual.positional_embedding
        )
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        _, _, v = F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)
        tokens = last.attn.out_proj(v)[0, 1:]  # (g*g, C)
        g = int(round(tokens.shape[0] ** 0.5))
        features = tokens.T.reshape(-1, g, g)
    out = []
    for mask in masks:
        cells = torch.from_numpy(mask[::cell, ::cell])
        pooled = features[:, cells].mean(dim=1)[None]
        if isinstance(visual, TimmModel):
            out.append(visual.head(visual.trunk.forward_head(pooled[:, :, None, None])))
        else:
            out.append(visual.ln_post(pooled) @ visual.proj)
    return F.normalize(torch.cat(out), dim=-1).numpy()


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["UNISAM_CACHE_DIR"] = str(out_dir / "cache")
    import unisam  # after UNISAM_CACHE_DIR is set

    summary = {}
    for k, arch in enumerate(ARCHS):
        rng = np.random.default_rng(k)
        torch.manual_seed(k)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        model.eval()
        state = out_dir / f"{arch}.pt"
        torch.save(model.state_dict(), state)
        tokenizer = open_clip.get_tokenizer(arch)
        pictures = images(rng)
        mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(3, 1, 1)
        std = torch.tensor(model.visual.preprocess_cfg["std"]).view(3, 1, 1)
        side = DENSE_SIZE[arch]
        square = images(rng)[2]
        square = np.array(Image.fromarray(square).resize((side, side), Image.Resampling.BILINEAR))
        cell = 32
        masks = cell_masks(rng, side // cell, cell, 12)
        with torch.no_grad():
            tokens = tokenizer(NAMES)
            text = F.normalize(model.encode_text(tokens), dim=-1).numpy()
            image = F.normalize(model.encode_image(torch.stack([preprocess(Image.fromarray(p)) for p in pictures])), dim=-1)
            canvas = ((torch.from_numpy(square).permute(2, 0, 1).float() / 255 - mean) / std)[None]
            dense = dense_reference(model, canvas, masks, cell)
        unisam.load_label_model(arch, weights=state)  # exports into the cache, as a user's first load does
        np.savez_compressed(
            out_dir / f"{arch}.npz", tokens=tokens.numpy(), text=text, image=image.numpy(), dense=dense,
            dense_image=square, dense_masks=masks, logit_scale=float(model.logit_scale.detach().exp()),
            **{f"picture{i}": p for i, p in enumerate(pictures)},
        )
        summary[arch] = {"state_dict": str(state), "pictures": len(pictures)}
    (out_dir / "reference.json").write_text(json.dumps({"names": NAMES, "archs": summary}, ensure_ascii=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
