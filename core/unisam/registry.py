"""Model cards: named models, their architecture and the files that hold their weights.

Pure Python (no torch, no onnxruntime) so that every layer of unisam can read a card.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ONNX_FORMAT = "unisam-onnx-v1"  # the "format" of a model.json written by `unisam export`
INSTANCE_HEAD_FILE = "instances.onnx"  # optional in an export folder: the instance head (watershed mode)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ArchSpec:
    """Architecture of a SAM-family model: image encoder + SAM prompt encoder + SAM mask decoder.

    ``encoder`` is one of ``"repvit"`` (EdgeSAM), ``"vit"`` (SAM), ``"tiny_vit"`` (MobileSAM);
    ``encoder_kwargs`` go to that encoder's constructor. The encoder maps a ``(B, 3, image_size,
    image_size)`` normalised, zero-padded image to a ``(B, embedding_chans, image_size // 16,
    image_size // 16)`` embedding; the decoder returns low-resolution mask logits of
    ``(image_size // 4, image_size // 4)``.

    ``hires_chans > 0`` (RepViT only) adds a high-resolution path: the encoder also projects its
    stride-4 features to ``hires_chans`` channels and carries them in the embedding, space-to-depth
    (``16 * hires_chans`` extra channels after the ``embed_dim`` ones), and the decoder fuses them
    with its upscaled features before the masks are formed. The embedding stays one tensor, so the
    runtime and its caches are unchanged. 0 is SAM's decoder (all official models).
    """

    encoder: str
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 1024
    embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    hires_chans: int = 0

    @property
    def embedding_chans(self) -> int:
        """Channels of the image embedding: ``embed_dim`` plus the space-to-depth high-res features."""
        return self.embed_dim + 16 * self.hires_chans

    @property
    def embedding_size(self) -> int:
        """Side of the square image embedding grid (image_size / 16)."""
        return self.image_size // 16

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (image_size / 4)."""
        return self.image_size // 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        data = dict(data)
        for key in ("pixel_mean", "pixel_std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file: where it lives, and how to know it arrived intact."""

    filename: str
    url: str
    sha256: str
    size: int | None  # bytes; None where the publisher shows only a rounded size (the SHA-256 decides)


@dataclass(frozen=True)
class ModelCard:
    """A named model: its architecture and the files that provide its weights.

    ``checkpoint`` is an official PyTorch state dict (needs the ``torch`` extra to export to ONNX);
    ``onnx`` is an (encoder, decoder) pair that runs with onnxruntime alone; ``bundled`` is a
    directory written by ``unisam export`` that ships inside the package (nothing to download).
    """

    name: str
    arch: ArchSpec
    description: str
    checkpoint: WeightFile | None = None
    onnx: tuple[WeightFile, WeightFile] | None = None
    bundled: Path | None = None
    everything: dict[str, float] = field(default_factory=dict)  # segment-everything defaults that differ from SAM's


EDGE_SAM = ArchSpec(encoder="repvit", encoder_kwargs={"arch": "m1", "fuse": True, "upsample_mode": "bicubic"})
SAM_VIT_B = ArchSpec(
    encoder="vit",
    encoder_kwargs={"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
)
SAM_VIT_L = ArchSpec(
    encoder="vit",
    encoder_kwargs={"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
)
SAM_VIT_H = ArchSpec(
    encoder="vit",
    encoder_kwargs={"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
)
MOBILE_SAM = ArchSpec(encoder="tiny_vit", encoder_kwargs={})

_REGISTRY: dict[str, ModelCard] = {}


def register(card: ModelCard) -> ModelCard:
    """Add a card to the registry (names are unique)."""
    if card.name in _REGISTRY:
        raise ValueError(f"model {card.name!r} is already registered")
    _REGISTRY[card.name] = card
    return card


def get_card(name: str) -> ModelCard:
    """The card registered under ``name``; a clear error listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def list_models() -> list[str]:
    return sorted(_REGISTRY)


ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODEL = "unisam-tiny"


def read_export(directory: str | Path) -> tuple[ArchSpec, dict[str, Any]]:
    """The architecture and the whole metadata of a directory written by ``unisam export`` (its
    model.json, the one source of truth for an export's shape)."""
    meta_path = Path(directory) / "model.json"
    if not meta_path.is_file():
        raise ValueError(f"{directory} has no model.json: not a directory written by `unisam export`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_path} is not readable JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_path}: unknown format {found!r} (expected {ONNX_FORMAT})")
    names = {f for f in ArchSpec.__dataclass_fields__}
    return ArchSpec.from_dict({k: v for k, v in meta.items() if k in names}), meta


register(
    ModelCard(
        name=BUNDLED_MODEL,
        arch=read_export(ASSETS / BUNDLED_MODEL)[0],
        description="small EdgeSAM-style model (input 256) distilled here from synthetic data; ships with "
        "unisam, used when no official weights are present (`unisam recipe` rebuilds it)",
        bundled=ASSETS / BUNDLED_MODEL,
        # its predicted IoUs run lower than SAM's: SAM's 0.88 / 0.95 keep nothing; these gave the best
        # precision at F1 near the best on held-out synthetic scenes (benchmarks/everything_thresholds.py)
        everything={"pred_iou_thresh": 0.5, "stability_score_thresh": 0.9},
    )
)

register(
    ModelCard(
        name=BUNDLED_MODEL + "-int8",
        arch=read_export(ASSETS / (BUNDLED_MODEL + "-int8"))[0],
        description="unisam-tiny with an int8 image encoder (ONNX Runtime static quantization, "
        "unisam.quantize.quantize_export; decoder float32); faster encoder, see benchmarks/int8.py",
        bundled=ASSETS / (BUNDLED_MODEL + "-int8"),
        everything=get_card(BUNDLED_MODEL).everything,
    )
)

_EDGESAM_SPACE = "https://huggingface.co/spaces/chongzhou/EdgeSAM/resolve/main/weights/"
_SAM_BUCKET = "https://dl.fbaipublicfiles.com/segment_anything/"

register(
    ModelCard(
        name="edgesam",
        arch=EDGE_SAM,
        description="EdgeSAM (RepViT-M1 encoder distilled from SAM ViT-H), official checkpoint",
        checkpoint=WeightFile(
            "edge_sam.pth",
            _EDGESAM_SPACE + "edge_sam.pth",
            "439b086a20ab6fba90c12cba32e0001ba3aa726da5791ff8738acdd440330991",
            38807540,
        ),
    )
)
register(
    ModelCard(
        name="edgesam-3x",
        arch=EDGE_SAM,
        description="EdgeSAM trained 3x longer (better masks, same speed), official checkpoint",
        checkpoint=WeightFile(
            "edge_sam_3x.pth",
            _EDGESAM_SPACE + "edge_sam_3x.pth",
            "5a3e3261da9e2f4c8154410885689ae57d09cbf4cf5d0c848b9d80b6df336ece",
            38807540,
        ),
    )
)
register(
    ModelCard(
        name="edgesam-3x-onnx",
        arch=EDGE_SAM,
        description="EdgeSAM-3x as published in ONNX by its authors (no torch needed; no mask-input refinement)",
        onnx=(
            WeightFile(
                "edge_sam_3x_encoder.onnx",
                _EDGESAM_SPACE + "edge_sam_3x_encoder.onnx",
                "719a498cf5b3fe9be9f01ee513e13d3915f9028aa4f23dfd30eaaa0a17143159",
                22098300,
            ),
            WeightFile(
                "edge_sam_3x_decoder.onnx",
                _EDGESAM_SPACE + "edge_sam_3x_decoder.onnx",
                "83a2174d54571596913dcb7455d021e713623c3dca30a31c8c41ab98c9fb0863",
                15937006,
            ),
        ),
    )
)
register(
    ModelCard(
        name="sam-vit-b",
        arch=SAM_VIT_B,
        description="SAM ViT-B (Meta), official checkpoint; the distillation teacher of choice on a CPU",
        checkpoint=WeightFile(
            "sam_vit_b_01ec64.pth",
            _SAM_BUCKET + "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            375042383,
        ),
    )
)
register(
    ModelCard(
        name="sam-vit-l",
        arch=SAM_VIT_L,
        description="SAM ViT-L (Meta), official checkpoint",
        checkpoint=WeightFile(
            "sam_vit_l_0b3195.pth",
            _SAM_BUCKET + "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            1249524607,
        ),
    )
)
register(
    ModelCard(
        name="sam-vit-h",
        arch=SAM_VIT_H,
        description="SAM ViT-H (Meta), official checkpoint; EdgeSAM's teacher",
        checkpoint=WeightFile(
            "sam_vit_h_4b8939.pth",
            _SAM_BUCKET + "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            2564550879,
        ),
    )
)
register(
    ModelCard(
        name="mobilesam",
        arch=MOBILE_SAM,
        description="MobileSAM (TinyViT-5M encoder), official checkpoint",
        checkpoint=WeightFile(
            "mobile_sam.pt",
            "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/"
            "f706ad9c4eb7f219c00d9050e46328518ffb65d2/weights/mobile_sam.pt",
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            40728226,
        ),
    )
)


# -- label models: open_clip CLIP models, named by open_clip's (architecture, pretrained tag) ----------

CLIP_FORMAT = "unisam-clip-onnx-v1"  # the "format" of a model.json written by unisam.models.clip
CLIP_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges, copied beside the graphs


@dataclass(frozen=True)
class LabelModelCard:
    """An open_clip model with published weights: ``arch`` and ``pretrained`` are open_clip's names
    (``open_clip.create_model(arch, pretrained=pretrained)``), ``weights`` the file its publisher
    serves (an open_clip state dict, or OpenAI's TorchScript archive for ``pretrained="openai"``),
    ``license`` the weights' licence and ``license_url`` where to read it. Weights under a licence
    outside :data:`PERMISSIVE_LICENSES` are used only once accepted (:func:`require_license`)."""

    arch: str
    pretrained: str
    weights: WeightFile
    license: str
    description: str
    license_url: str | None = None

    @property
    def name(self) -> str:
        return f"{self.arch}/{self.pretrained}"

    @property
    def opt_in(self) -> bool:
        """True when the licence is not a permissive one: the weights need :func:`require_license`."""
        return self.license not in PERMISSIVE_LICENSES


PERMISSIVE_LICENSES = frozenset({"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause"})
ACCEPT_LICENSES_ENV = "UNISAM_ACCEPT_LICENSES"  # comma-separated licence names the user accepts


class LicenseNotAcceptedError(PermissionError):
    """A label model's weights are under a non-permissive licence that the user has not accepted."""


def require_license(card: LabelModelCard, accept_license: str | None = None) -> None:
    """Return if ``card``'s weights may be downloaded and used: a permissive licence, or its name
    given as ``accept_license`` or listed in ``$UNISAM_ACCEPT_LICENSES`` (comma-separated); raise
    :class:`LicenseNotAcceptedError` saying which licence, where to read it and how to opt in otherwise."""
    if not card.opt_in:
        return
    accepted = {name.strip() for name in os.environ.get(ACCEPT_LICENSES_ENV, "").split(",")} | {accept_license}
    if card.license in accepted:
        return
    where = card.license_url or "the publisher's page"
    raise LicenseNotAcceptedError(
        f"the weights of {card.name} are under the {card.license!r} licence, not a permissive one: read it at "
        f"{where}; to accept it pass accept_license={card.license!r} (unisam.load_label_model), "
        f"--accept-license {card.license} (unisam weights pull) or set {ACCEPT_LICENSES_ENV}={card.license}"
    )


_LABEL_REGISTRY: dict[tuple[str, str], LabelModelCard] = {}
# the label model used when none is named: a convolutional CLIP (dense pooling suits it), MIT-licensed
DEFAULT_LABEL_MODEL = "convnext_base_w/laion2b_s13b_b82k"


def register_label_model(card: LabelModelCard) -> LabelModelCard:
    """Add a label-model card (unique by (arch, pretrained))."""
    key = (card.arch, card.pretrained)
    if key in _LABEL_REGISTRY:
        raise ValueError(f"label model {card.name!r} is already registered")
    _LABEL_REGISTRY[key] = card
    return card


def get_label_card(arch: str, pretrained: str) -> LabelModelCard:
    """The card of open_clip's (``arch``, ``pretrained``); a clear error listing the known pairs otherwise."""
    try:
        return _LABEL_REGISTRY[(arch, pretrained)]
    except KeyError:
        known = ", ".join(sorted(c.name for c in _LABEL_REGISTRY.values()))
        raise ValueError(
            f"no registered weights for open_clip {arch!r} pretrained={pretrained!r}; registered: {known}. "
            "For other weights pass weights=<open_clip state-dict file>"
        ) from None


def list_label_models() -> list[str]:
    """``arch/pretrained`` of every registered label model."""
    return sorted(c.name for c in _LABEL_REGISTRY.values())


def read_clip_export(directory: str | Path) -> dict[str, Any]:
    """The metadata (model.json) of a directory written by :func:`unisam.models.clip.export_clip`."""
    meta_path = Path(directory) / "model.json"
    if not meta_path.is_file():
        raise ValueError(f"{directory} has no model.json: not a CLIP model exported by unisam")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_path} is not readable JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != CLIP_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_path}: format {found!r} is not a CLIP export ({CLIP_FORMAT})")
    return meta


register_label_model(
    LabelModelCard(
        arch="convnext_base_w",
        pretrained="laion2b_s13b_b82k",
        # the file open_clip 3.3 downloads for this tag (its safetensors preference), pinned to the commit
        # whose Hub page gave the SHA-256 (the page shows the size only as "718 MB")
        weights=WeightFile(
            "CLIP-convnext_base_w-laion2B-s13B-b82K.safetensors",
            "https://huggingface.co/laion/CLIP-convnext_base_w-laion2B-s13B-b82K/resolve/"
            "1bda9a8995c2c62f1c68c653e2f5993acbfc111d/open_clip_model.safetensors",
            "a7528aa0381ddcd2cf5791eb5efd8b695d109b57fbcf9f53fb464ab3950d86b0",
            None,
        ),
        license="MIT",
        description="OpenCLIP ConvNeXt-Base (wide) trained on LAION-2B, 256 px, 70.8% ImageNet zero-shot (LAION)",
        license_url="https://huggingface.co/laion/CLIP-convnext_base_w-laion2B-s13B-b82K",
    )
)

# OpenAI's own CLIP releases: TorchScript archives whose URL holds their SHA-256 (OpenAI's `clip` package
# checks the download against it; open_clip lists the same URLs for pretrained="openai")
_OPENAI_CLIP = "https://openaipublic.azureedge.net/clip/models/"


def _openai_clip(arch: str, title: str, sha256: str, accuracy: float) -> LabelModelCard:
    return LabelModelCard(
        arch=arch,
        pretrained="openai",
        weights=WeightFile(f"openai-clip-{arch}.pt", f"{_OPENAI_CLIP}{sha256}/{arch}.pt", sha256, None),
        license="MIT",
        description=f"OpenAI's CLIP {title} as OpenAI released it (TorchScript, QuickGELU), 224 px, {accuracy}% "
        "ImageNet zero-shot; MIT per OpenAI's CLIP repository, whose model card puts deployed use out of scope",
        license_url="https://github.com/openai/CLIP/blob/main/LICENSE",
    )


register_label_model(
    _openai_clip("ViT-B-32", "ViT-B/32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", 63.2)
)
register_label_model(
    _openai_clip("ViT-B-16", "ViT-B/16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", 68.3)
)
