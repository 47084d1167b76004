"""PyTorch side of unisam (``torch`` extra): model definitions, official checkpoints, ONNX export.

``build_sam(spec)`` assembles image encoder + prompt encoder + mask decoder for an
:class:`~unisam.registry.ArchSpec`; ``load_checkpoint`` fills it strictly from an official flat state
dict; ``export_onnx`` writes the encoder/decoder graphs that the NumPy + onnxruntime runtime uses.
"""

from .checkpoint import LoadReport, load_checkpoint, save_checkpoint
from .export import ExportedPaths, export_instance_head, export_onnx
from .sam import Sam, build_sam

__all__ = ["ExportedPaths", "LoadReport", "Sam", "build_sam", "export_instance_head", "export_onnx", "load_checkpoint", "save_checkpoint"]
