"""Image encoders against the official EdgeSAM / SAM / MobileSAM code, and inference-time fusing.

Each reference encoder is built with a fixed seed, its BatchNorm statistics and affine parameters are
randomised and every other parameter is perturbed (so zero-initialised tensors such as position
embeddings matter), then its state dict is loaded strictly into ours (and ours back into it) and the
outputs are compared.
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from reference import install_reference_stubs
from torch import nn

from unisam.models.fuse import fuse_for_inference
from unisam.models.repvit import ARCH_CFGS, RepVGGDW, RepViTEncoder
from unisam.models.tiny_vit import TinyViTEncoder
from unisam.models.vit import ViTEncoder

install_reference_stubs()
from edge_sam.modeling import rep_vit as ref_rep_vit  # noqa: E402
from mobile_sam.build_sam import build_sam_vit_t  # noqa: E402
from segment_anything.modeling.image_encoder import ImageEncoderViT  # noqa: E402


# Zero-initialised position tables, given trained-like magnitudes so that they matter.
POSITION_TABLES = {"attention_biases": 0.5, "rel_pos_h": 0.2, "rel_pos_w": 0.2}


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN stats/affines (scale in [0.5, 1.5]); other parameters get N(0, 0.02) added (the
    position tables of :data:`POSITION_TABLES` more)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
                n = mod.num_features
                mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            else:
                for name, p in mod.named_parameters(recurse=False):
                    p.add_(torch.randn(p.shape, generator=gen) * POSITION_TABLES.get(name, 0.02))
    return model.eval()


def load_both_ways(reference: nn.Module, ours: nn.Module) -> None:
    """Same keys in the same order with the same shapes; strict loads succeed in both directions."""
    ref_sd, our_sd = reference.state_dict(), ours.state_dict()
    assert list(ref_sd) == list(our_sd), sorted(set(ref_sd) ^ set(our_sd))[:20]
    bad = [k for k in ref_sd if ref_sd[k].shape != our_sd[k].shape]
    assert not bad, bad[:20]
    ours.load_state_dict(ref_sd, strict=True)
    reference.load_state_dict(ours.state_dict(), strict=True)


def image(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel:g} * output scale {scale:.3g}"


@torch.no_grad()
def compare(reference: nn.Module, ours: nn.Module, size: int) -> torch.Tensor:
    """Load the randomised reference into ours, compare outputs at ``size``; return ours."""
    torch.manual_seed(0)
    randomise_(reference)
    load_both_ways(reference, ours)
    reference.eval()  # after loading: MobileSAM caches its attention biases in eval()
    ours.eval()
    x = image(size)
    out = ours(x)
    assert out.shape == (1, 256, size // 16, size // 16)
    assert_close(out, reference(x))
    return out


@pytest.fixture(scope="module")
def repvit_m1_1024() -> RepViTEncoder:
    """Our RepViT-M1 holding a randomised reference's weights, checked at 1024 against the reference."""
    torch.manual_seed(0)
    reference = ref_rep_vit.RepViT("m1", img_size=1024, fuse=True, upsample_mode="bicubic")
    ours = RepViTEncoder("m1", img_size=1024)
    compare(reference, ours, 1024)
    return ours


def test_repvit_tables_equal_official() -> None:
    assert ARCH_CFGS["m1"] == ref_rep_vit.m1_cfgs
    assert ARCH_CFGS["m2"] == ref_rep_vit.m2_cfgs
    assert ARCH_CFGS["m3"] == ref_rep_vit.m3_cfgs


def test_repvit_m1_matches_reference_at_1024(repvit_m1_1024: RepViTEncoder) -> None:
    assert repvit_m1_1024.img_size == 1024


@pytest.mark.parametrize(
    ("arch", "size", "fuse", "mode"),
    [("m1", 256, True, "bicubic"), ("m1", 512, False, "bicubic"), ("m1", 256, True, "bilinear"),
     ("m2", 256, True, "bicubic"), ("m3", 256, True, "bicubic")],
)
def test_repvit_matches_reference_at_small_sizes(arch: str, size: int, fuse: bool, mode: str) -> None:
    torch.manual_seed(0)
    reference = ref_rep_vit.RepViT(arch, img_size=size, fuse=fuse, upsample_mode=mode)
    compare(reference, RepViTEncoder(arch, img_size=size, fuse=fuse, upsample_mode=mode), size)


def test_repvit_custom_cfgs_build_a_narrower_student() -> None:
    cfgs = [[3, 2, 16, 1, 0, 1], [3, 2, 32, 0, 0, 2], [3, 2, 64, 1, 1, 2], [3, 2, 64, 0, 1, 1], [3, 2, 96, 0, 1, 2]]
    student = RepViTEncoder(cfgs=cfgs, img_size=128, out_dim=64).eval()
    with torch.no_grad():
        out = student(image(128))
    assert out.shape == (1, 64, 8, 8)
    assert student.fuse_stage2.in_channels == 64 and student.fuse_stage3.op_list[0].in_channels == 96
    assert sum(p.numel() for p in student.parameters()) < 0.1 * sum(
        p.numel() for p in RepViTEncoder().parameters()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "m9"}, "unknown RepViT arch"),
        ({"img_size": 1000}, "multiple of 32"),
        ({"upsample_mode": "area"}, "upsample_mode"),
        ({"cfgs": [[3, 2, 16, 0, 0, 1], [3, 2, 32, 0, 0, 2]]}, "4 stages"),
        ({"cfgs": [[3, 2, 16, 0, 0, 1], [3, 2, 32, 0, 0, 1]]}, "stride must be 2"),
        ({"cfgs": [[3, 4, 16, 0, 0, 1]]}, "t=2"),
        ({"cfgs": [[3, 2, 12, 0, 0, 1]]}, "multiple of 8"),
    ],
)
def test_repvit_rejects_bad_configs(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RepViTEncoder(**kwargs)


def test_encoders_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        RepViTEncoder(img_size=64)(torch.zeros(1, 3, 80, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        ViTEncoder(img_size=64, embed_dim=32, depth=1, num_heads=2)(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        TinyViTEncoder(img_size=64)(torch.zeros(1, 1, 64, 64))


def test_vit_b_keys_match_reference_at_1024() -> None:
    reference = ImageEncoderViT(img_size=1024, use_rel_pos=True, window_size=14, global_attn_indexes=(2, 5, 8, 11))
    ours = ViTEncoder(img_size=1024)
    load_both_ways(reference, ours)
    assert ours.pos_embed.shape == (1, 64, 64, 768)
    assert ours.blocks[2].attn.rel_pos_h.shape == (127, 64)  # global block: 2 * 64 - 1
    assert ours.blocks[0].attn.rel_pos_h.shape == (27, 64)  # windowed block: 2 * 14 - 1


def test_vit_b_matches_reference_at_256() -> None:
    """Official ViT-B width and depth; 16x16 tokens so the 14x14 windows are padded."""
    torch.manual_seed(0)
    reference = ImageEncoderViT(img_size=256, use_rel_pos=True, window_size=14, global_attn_indexes=(2, 5, 8, 11))
    ours = ViTEncoder(img_size=256)
    compare(reference, ours, 256)
    assert ours.pos_embed.shape == (1, 16, 16, 768)


def test_small_vit_variant_matches_reference() -> None:
    """Non-default kwargs (no qkv bias, 3x3 windows, other global blocks, other out_chans)."""
    kwargs = dict(embed_dim=96, depth=4, num_heads=4, mlp_ratio=2.0, window_size=3, global_attn_indexes=(1, 3))
    torch.manual_seed(0)
    reference = ImageEncoderViT(img_size=128, qkv_bias=False, out_chans=256, use_rel_pos=True, **kwargs)
    compare(reference, ViTEncoder(img_size=128, qkv_bias=False, **kwargs), 128)


@pytest.fixture(scope="module")
def tiny_vit_1024() -> TinyViTEncoder:
    """Our TinyViT holding a randomised MobileSAM encoder's weights, checked at 1024 against it."""
    torch.manual_seed(0)
    reference = build_sam_vit_t().image_encoder  # the official build: includes the unused ImageNet head
    ours = TinyViTEncoder(img_size=1024)
    compare(reference, ours, 1024)
    return ours


def test_tiny_vit_matches_mobile_sam_at_1024(tiny_vit_1024: TinyViTEncoder) -> None:
    keys = tiny_vit_1024.state_dict()
    assert {"head.weight", "norm_head.weight"} <= set(keys)  # present in mobile_sam.pt
    assert keys["layers.2.blocks.0.attn.attention_biases"].shape == (5, 196)


@torch.no_grad()
def test_fuse_repvit_is_exact_and_removes_batchnorms(repvit_m1_1024: RepViTEncoder) -> None:
    model = randomise_(RepViTEncoder("m1", img_size=256), seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    num_rep = sum(isinstance(m, RepVGGDW) for m in model.modules())
    fused = fuse_for_inference(model)

    assert not any(isinstance(m, nn.BatchNorm2d | RepVGGDW) for m in fused.modules())
    num_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in fused.modules()) == num_conv - num_rep  # 1x1 branches gone
    stride1_rows = sum(row[5] == 1 for row in ARCH_CFGS["m1"])
    assert num_rep == stride1_rows  # one RepVGGDW per stride-1 block
    assert num_bn == 2 + 4 * len(ARCH_CFGS["m1"])  # stem 2, then 4 ConvBNs per block
    # the input is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == num_bn

    x = image(256, seed=5)
    assert_close(fused(x), model(x), rel=1e-5)
    # in float64 the folding is exact up to float64 rounding (small input: float64 convs are slow)
    x64 = image(64, seed=5).double()
    assert_close(fuse_for_inference(model.double())(x64), model(x64), rel=1e-10)

    # the 1024 model too (the one checked against the reference)
    x = image(1024, seed=6)
    assert_close(fuse_for_inference(repvit_m1_1024)(x), repvit_m1_1024(x), rel=1e-5)


@torch.no_grad()
def test_fuse_tiny_vit_is_exact(tiny_vit_1024: TinyViTEncoder) -> None:
    fused = fuse_for_inference(tiny_vit_1024)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = image(1024, seed=7)
    assert_close(fused(x), tiny_vit_1024(x), rel=1e-5)


@torch.no_grad()
def test_fuse_generic_pairs_in_any_module() -> None:
    """Conv(with bias)+BN2d, Linear+BN1d and BN1d+Linear inside arbitrary nesting; train mode input."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Flatten(),
        nn.Sequential(nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16)),
        nn.Sequential(nn.BatchNorm1d(16), nn.Linear(16, 4, bias=False)),
    )
    randomise_(model, seed=2).train()
    fused = fuse_for_inference(model)
    assert model.training and not fused.training
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(5, 3, 8, 8)
    assert_close(fused(x), model.eval()(x), rel=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@torch.no_grad()
def test_fused_repvit_exports_to_onnx_and_matches() -> None:
    """TorchScript exporter (the dynamo one works too but takes ~10 s); ORT reproduces torch."""
    model = fuse_for_inference(randomise_(RepViTEncoder("m1", img_size=128), seed=4))
    x = image(128, seed=8)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["image"], output_names=["embedding"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    expected = model(x).numpy()
    assert out.shape == expected.shape == (1, 256, 8, 8)
    diff = float(np.abs(out - expected).max())
    assert diff <= 1e-4 * float(np.abs(expected).max()), diff


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 16, 32, 32), (1, 1, 1, 1), (1, 2, 2, 9)])
def test_upsample2x_convolution_equals_torch_upsample(mode, shape):
    from unisam.models.fuse import Upsample2x

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3
    expected = torch.nn.Upsample(scale_factor=2, mode=mode, align_corners=False)(x)
    got = Upsample2x(mode)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5


def test_fuse_replaces_the_neck_upsample():
    from unisam.models.fuse import Upsample2x

    fused = fuse_for_inference(RepViTEncoder(img_size=256))
    kinds = {type(m) for m in fused.modules()}
    assert Upsample2x in kinds and torch.nn.Upsample not in kinds
