"""ONNX Runtime sessions with deliberate options, and the mask post-processing graph."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def default_threads() -> int:
    """Threads for one session: the cores this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, arena: bool = True) -> ort.SessionOptions:
    """Options tuned for latency on a few CPU cores.

    - all graph optimisations (constant folding, conv/BN/activation and attention fusions);
    - sequential execution with intra-op threads = usable cores: the SAM graphs are chains, so
      inter-op parallelism only adds scheduling cost;
    - memory pattern on: shapes repeat from call to call, so buffers are planned once;
    - the CPU arena (which keeps freed buffers reserved) only where asked: it speeds up the many
      small decoder calls, while for the image encoder it would hold ~50 MB of activations forever.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = arena
    opts.log_severity_level = 3  # errors only: ORT's warnings are not actionable for users
    return opts


def create_session(model: str | Path | bytes, threads: int | None = None, arena: bool = True) -> ort.InferenceSession:
    """An inference session on the CPU for an ONNX file (or serialized model bytes).

    A file that is missing or not a valid ONNX model gives a ``ValueError`` naming it.
    """
    source = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ValueError(f"ONNX model file not found: {model}")
    try:
        return ort.InferenceSession(source, sess_options=session_options(threads, arena), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        name = "in-memory model" if isinstance(model, bytes) else str(model)
        raise ValueError(f"could not load ONNX model {name}: {exc}") from exc


def build_upscale_graph() -> bytes:
    """ONNX graph that maps low-res mask logits to the original image, exactly as SAM does.

    Inputs: ``low_res`` float32 (M, 1, r, c): the decoder's (image_size/4)-square logits, already
    cropped to the rows/columns that the resized image uses (see :meth:`Upscaler.__call__`);
    ``input_size`` int64 (2,) = (h, w) of the resized image inside the padded square;
    ``original_size`` int64 (2,) = (H, W). Output: ``masks`` float32 (M, 1, H, W) logits.

    Steps (as ``Sam.postprocess_masks``): bilinear upsample x4 to the model's input frame, crop the
    padding away to (h, w), bilinear resize to (H, W). Bilinear = PyTorch's ``align_corners=False``
    without antialiasing (ONNX ``half_pixel``, ``antialias=0``).
    """
    low_res = helper.make_tensor_value_info("low_res", TensorProto.FLOAT, ["M", 1, "r", "c"])
    input_size = helper.make_tensor_value_info("input_size", TensorProto.INT64, [2])
    original_size = helper.make_tensor_value_info("original_size", TensorProto.INT64, [2])
    masks = helper.make_tensor_value_info("masks", TensorProto.FLOAT, ["M", 1, "H", "W"])
    inits = [
        helper.make_tensor("scales4", TensorProto.FLOAT, [4], [1.0, 1.0, 4.0, 4.0]),
        helper.make_tensor("zeros2", TensorProto.INT64, [2], [0, 0]),
        helper.make_tensor("axes_hw", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("start0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("end2", TensorProto.INT64, [1], [2]),
    ]
    resize_attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    nodes = [
        helper.make_node("Resize", ["low_res", "", "scales4"], ["full"], **resize_attrs),
        helper.make_node("Slice", ["full", "zeros2", "input_size", "axes_hw"], ["cropped"]),
        helper.make_node("Shape", ["low_res"], ["shape"]),
        helper.make_node("Slice", ["shape", "start0", "end2"], ["batch_dims"]),
        helper.make_node("Concat", ["batch_dims", "original_size"], ["out_sizes"], axis=0),
        helper.make_node("Resize", ["cropped", "", "", "out_sizes"], ["masks"], **resize_attrs),
    ]
    graph = helper.make_graph(nodes, "unisam_upscale", [low_res, input_size, original_size], [masks], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="unisam")
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Upscaler:
    """Runs :func:`build_upscale_graph`."""

    def __init__(self, threads: int | None = None):
        self._session = create_session(build_upscale_graph(), threads)

    def __call__(
        self, low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> np.ndarray:
        """(M, s, s) low-res logits -> (M, H, W) float32 logits at the original image size.

        Only the low-res rows/columns that bilinear x4 upsampling reads for the (h, w) region are
        kept (the rest is padding), which is exact and saves work on non-square images.
        """
        if low_res.shape[0] == 0:
            return np.zeros((0, *original_size), np.float32)
        side = low_res.shape[-1]
        rows, cols = (min(side, n // 4 + 2) for n in input_size)
        out = self._session.run(
            None,
            {
                "low_res": np.ascontiguousarray(low_res[:, None, :rows, :cols], dtype=np.float32),
                "input_size": np.asarray(input_size, np.int64),
                "original_size": np.asarray(original_size, np.int64),
            },
        )[0]
        return out[:, 0]
