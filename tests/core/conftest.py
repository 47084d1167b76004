"""Session fixtures: an official-layout EdgeSAM checkpoint with random weights, and its ONNX export.

The checkpoint is written from the *reference* EdgeSAM model (``edge_sam``), so everything built on
it (strict loading, export, predictor) is checked against code unisam does not share.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reference import install_reference_stubs


def randomize_norm_layers(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every batch norm non-trivial statistics and affine parameters (so folding is exercised)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0.0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)


@pytest.fixture(scope="session")
def reference_edgesam() -> torch.nn.Module:
    """The official EdgeSAM (1024 input, bicubic neck) with seeded random weights, in eval mode."""
    install_reference_stubs()
    from edge_sam import build_sam

    torch.manual_seed(0)
    model = build_sam()
    randomize_norm_layers(model, torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture(scope="session")
def edgesam_checkpoint(reference_edgesam, tmp_path_factory) -> Path:
    """``edge_sam.pth`` in the official flat layout, written from the reference model."""
    path = tmp_path_factory.mktemp("ckpt") / "edge_sam.pth"
    torch.save(reference_edgesam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def edgesam_onnx(edgesam_checkpoint, tmp_path_factory) -> Path:
    """unisam's EdgeSAM, strictly loaded from the checkpoint and exported (encoder fused) to ONNX."""
    from unisam.models import build_sam, export_onnx, load_checkpoint
    from unisam.registry import EDGE_SAM

    model = build_sam(EDGE_SAM).eval()
    load_checkpoint(model, edgesam_checkpoint)
    out = tmp_path_factory.mktemp("onnx") / "edgesam"
    export_onnx(model, out)
    return out


@pytest.fixture(scope="session")
def edgesam_predictor(edgesam_onnx):
    import unisam

    return unisam.load_model(weights=edgesam_onnx)

