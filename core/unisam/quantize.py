"""An int8 image encoder from a float32 export, with ONNX Runtime's static quantization.

:func:`quantize_export` reads a directory written by ``unisam export`` (or a bundled model) and writes a
copy whose ``encoder.onnx`` has int8 weights (per output channel) and uint8 activations, as
``QLinearConv`` and friends (ONNX Runtime's QOperator format, which its CPU kernels ran faster than the
QDQ form of the same graph), GELUs fused and kept in float32; the decoder is kept in float32 (a few
small matrix products per prompt). Measured (``benchmarks/int8.py``, one thread): on the EdgeSAM encoder
(1024 input) int8 takes 0.48x the float32 time; on unisam-tiny's small 256-input encoder (3 ms) 0.93x,
the quantize / dequantize steps eating most of the gain. Activation ranges are calibrated (min/max) on synthetic scenes of
every kind from :mod:`unisam.data.synthetic`, seeded, so the result is reproducible; no real image is
used.

The bundled ``unisam-tiny-int8`` is ``quantize_export(ASSETS / "unisam-tiny", ...)`` with its decoder
linked to ``unisam-tiny``'s. ``python benchmarks/int8.py`` measures its speed and accuracy against
float32. Needs only onnxruntime (its ``quantization`` package) and onnx.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .registry import read_export
from .weights import sha256_file

CALIBRATION_IMAGES = 32
CALIBRATION_SEED = 0


def calibration_tensors(
    directory: str | Path, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
) -> list[np.ndarray]:
    """``n`` encoder inputs ``(1, 3, S, S)`` float32 (normalised, padded) of seeded synthetic scenes, the
    kinds in turn, for the export in ``directory``."""
    from .data.synthetic import KINDS, generate_sample
    from .images import load_image
    from .runtime.transforms import normalize_and_pad, resize_longest_side

    spec, _ = read_export(directory)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = load_image(generate_sample(rng, (spec.image_size, spec.image_size), KINDS[i % len(KINDS)]).image)
        resized = resize_longest_side(image, spec.image_size)
        out.append(normalize_and_pad(resized, spec.image_size, spec.pixel_mean, spec.pixel_std))
    return out


def quantize_export(source: str | Path, out_dir: str | Path, *, calibration: list[np.ndarray] | None = None) -> Path:
    """Write ``out_dir`` (encoder.onnx int8, decoder.onnx copied, model.json) from the float32 export in
    ``source``. ``calibration``: encoder inputs for the activation ranges (default
    :func:`calibration_tensors`). The source's instance head is not carried over: it was trained on
    float32 embeddings (``unisam instance-head --model OUT_DIR`` trains one for the int8 encoder).
    Returns ``out_dir``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, out_dir = Path(source), Path(out_dir)
    _, meta = read_export(source)
    if meta.get("quantized"):
        raise ValueError(f"{source} is already quantized ({meta['quantized']}); give a float32 export")
    tensors = calibration if calibration is not None else calibration_tensors(source)
    if not tensors:
        raise ValueError("calibration needs at least one encoder input")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._inputs = iter(tensors)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._inputs, None)
            return None if x is None else {"image": x}

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fused, prepared = Path(tmp) / "fused.onnx", Path(tmp) / "encoder.onnx"
        _fuse_gelu(source / "encoder.onnx", fused)
        quant_pre_process(str(fused), str(prepared), skip_optimization=True)  # shapes for the quantizer
        quantize_static(
            str(prepared), str(out_dir / "encoder.onnx"), _Reader(), quant_format=QuantFormat.QOperator,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
    if not (out_dir / "decoder.onnx").exists():
        shutil.copyfile(source / "decoder.onnx", out_dir / "decoder.onnx")
    meta = {k: v for k, v in meta.items() if k not in ("instances_sha256", "instance_head")}  # see the docstring
    meta.update(
        encoder_sha256=sha256_file(out_dir / "encoder.onnx"),
        quantized="int8 encoder: ONNX Runtime static QOperator, per-channel int8 weights, uint8 activations, "
        f"min/max calibration on {len(tensors)} synthetic scenes",
    )
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def _fuse_gelu(encoder: Path, out: Path) -> None:
    """``encoder`` with ONNX Runtime's extended graph fusions applied (GELU's Erf pattern becomes one
    ``Gelu`` node, which stays float32 between quantized convolutions), written to ``out``. Conv +
    activation fusion is left out: its ``FusedConv`` nodes cannot be quantized."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(encoder), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["ConvActivationFusion"])
