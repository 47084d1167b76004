"""unisam: promptable segmentation (EdgeSAM family) on ONNX Runtime + NumPy.

>>> import unisam
>>> model = unisam.load_model()                     # bundled model, or EdgeSAM once its weights are cached
>>> emb = model.embed("cells.png")                  # encoder runs once per image
>>> pred = model.predict(emb, points=[[120, 80]], point_labels=[1])
>>> result = unisam.segment("cells.png", points=[[120, 80]])   # -> Instances
>>> stack = unisam.propagate(zstack, start=5, mask=result.masks[0])  # the object through the stack
>>> tiles = unisam.segment_everything_tiled("slide.tif")  # large images: overlapping tiles
"""

from .api import default_model, everything_defaults, get_model, load_model, segment, segment_everything
from .instances import Instances
from .prompts import Prompt
from .runtime.predictor import Prediction, Predictor
from .runtime.propagate import Propagation, propagate
from .runtime.tiling import segment_everything_tiled, segment_tiled

__all__ = [
    "Instances",
    "Prediction",
    "Predictor",
    "Prompt",
    "Propagation",
    "default_model",
    "everything_defaults",
    "get_model",
    "load_model",
    "propagate",
    "segment",
    "segment_everything",
    "segment_everything_tiled",
    "segment_tiled",
]
