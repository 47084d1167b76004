"""unisam: promptable segmentation (EdgeSAM family) on ONNX Runtime + NumPy.

>>> import unisam
>>> result = unisam.segment("examples/nuclei.png", points=[[334, 303]])      # -> Instances
>>> found = unisam.segment_everything("examples/nuclei.png", points_per_side=16)
>>> model = unisam.get_model()                     # the shared default (bundled unisam-tiny offline)
>>> named = unisam.label("examples/nuclei.png", found, ["nucleus", "debris"], model=clip)  # clip: load_label_model
>>> tracks = unisam.track("cells.mp4", [unisam.Prompt(box=[10, 20, 60, 70])])  # -> Tracks, ids per frame

Everything a host adapter needs is a name of this package; the submodules are the implementation.
"""

from .api import embed, everything_defaults, propagate, segment, segment_everything
from .frames import Frames, open_frames
from .hub import default_model, get_label_model, get_model, load_label_model, load_model, model_name
from .images import load_image
from .instances import Instances
from .label import MODES as LABEL_MODES
from .label import TEMPLATES as LABEL_TEMPLATES
from .label import Vocabulary, label, segment_and_label
from .masks import masks_to_boxes
from .prompts import Prompt
from .registry import DEFAULT_LABEL_MODEL, list_label_models, list_models
from .runtime.cache import Embedding, LRUCache
from .runtime.clip import ClipModel
from .runtime.everything import EverythingParams
from .runtime.predictor import Prediction, Predictor
from .runtime.tiling import Tiling
from .runtime.track import StopRules, TrackRules
from .track import track
from .tracks import Tracks
from .weights import WeightsNotFoundError, cache_dir

__all__ = [
    "DEFAULT_LABEL_MODEL",
    "LABEL_MODES",
    "LABEL_TEMPLATES",
    "ClipModel",
    "Embedding",
    "EverythingParams",
    "Frames",
    "Instances",
    "LRUCache",
    "Prediction",
    "Predictor",
    "Prompt",
    "StopRules",
    "Tiling",
    "TrackRules",
    "Tracks",
    "Vocabulary",
    "WeightsNotFoundError",
    "cache_dir",
    "default_model",
    "embed",
    "everything_defaults",
    "get_label_model",
    "get_model",
    "label",
    "list_label_models",
    "list_models",
    "load_image",
    "load_label_model",
    "load_model",
    "masks_to_boxes",
    "model_name",
    "open_frames",
    "propagate",
    "segment",
    "segment_and_label",
    "segment_everything",
    "track",
]
