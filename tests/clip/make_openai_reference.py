"""open_clip's own answers for an archive in the layout of OpenAI's CLIP releases, for
tests/core/test_label_cards.py.

Runs in the CLIP virtualenv (torch + open_clip, built by .ci/setup-clip.sh), never in the project venv:
    .venv-clip/bin/python tests/clip/make_openai_reference.py OUT_DIR [ARCH]

OpenAI publishes its CLIP weights (``ViT-B-32.pt``, ...) as TorchScript archives of its own model:
QuickGELU, weights cast to float16 as OpenAI's ``convert_weights`` does, and three integer entries
(``input_resolution``, ``context_length``, ``vocab_size``) beside the tensors. This script makes such an
archive from open_clip's ``ARCH`` (default ``ViT-S-32``: OpenAI's layout at a third of ``ViT-B-32``'s
export time; ``ViT-B-32`` for the released model's own shape) with QuickGELU and seeded random weights, scripted with
``torch.jit.script`` as open_clip's ``jit=True`` does, then writes what open_clip's own loader for
OpenAI archives (``open_clip.load_openai_model``) computes from it: L2-normalised ``encode_text`` of
some names and ``encode_image`` of some images (open_clip's preprocess for OpenAI weights). Finally
``unisam.load_label_model(arch, weights=archive)`` exports it into ``OUT_DIR/cache``
(UNISAM_CACHE_DIR), as a user's first load does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.model import convert_weights_to_lp
from open_clip.pretrained import get_pretrained_url
from PIL import Image
from torch.nn import functional as F

NAMES = ["cat", "a photo of a dog", "tv, television", "naïve café", "a red bicycle", "x" * 300]


def openai_archive(arch: str, path: Path, seed: int = 0) -> Path:
    """A TorchScript archive of open_clip's ``arch`` in the layout of OpenAI's ``ViT-B-32.pt``, with seeded
    random weights."""
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True).eval()
    convert_weights_to_lp(model, dtype=torch.float16)  # as OpenAI's convert_weights before its release
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, key):  # open_clip keeps two of them as plain ints; OpenAI's archive as tensors
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))
    mask = model._buffers.pop("attn_mask")  # OpenAI's text mask is an attribute, not an entry of the file
    model.attn_mask = mask
    torch.jit.script(model).save(str(path))
    return path


def pictures(rng: np.random.Generator) -> list[np.ndarray]:
    """Smooth random RGB images of several shapes."""
    out = []
    for h, w in [(180, 260), (300, 200), (224, 224)]:
        small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)))
    return out


def main(out_dir: Path, arch: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["UNISAM_CACHE_DIR"] = str(out_dir / "cache")
    import unisam  # after UNISAM_CACHE_DIR is set

    t0 = time.perf_counter()
    archive = openai_archive(arch, out_dir / "archive.pt")
    t1 = time.perf_counter()
    model = open_clip.load_openai_model(str(archive), precision="fp32", device="cpu").eval()
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    images = pictures(np.random.default_rng(0))
    with torch.no_grad():
        tokens = open_clip.get_tokenizer(arch)(NAMES)
        text = F.normalize(model.encode_text(tokens), dim=-1).numpy()
        image = F.normalize(model.encode_image(torch.stack([preprocess(Image.fromarray(p)) for p in images])), dim=-1)
    t2 = time.perf_counter()
    unisam.load_label_model(arch, weights=archive)
    t3 = time.perf_counter()
    np.savez_compressed(
        out_dir / "reference.npz", text=text, image=image.numpy(),
        logit_scale=float(model.logit_scale.detach().exp()), **{f"picture{i}": p for i, p in enumerate(images)},
    )
    (out_dir / "reference.json").write_text(json.dumps({
        "arch": arch,
        "names": NAMES,
        "openai_url": {a: get_pretrained_url(a, "openai") for a in ("ViT-B-32", "ViT-B-16")},
        "seconds": {"archive": t1 - t0, "open_clip": t2 - t1, "export": t3 - t2},
    }, ensure_ascii=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ViT-S-32")
