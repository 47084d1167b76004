"""Label Studio ML backend for unisam: smart keypoints/rectangles -> brush masks, smart video boxes ->
tracked keyframes, batch segment-everything.

Run it with ``unisam-labelstudio`` (see plugins/labelstudio/README.md), or build the app yourself:

>>> from unisam_labelstudio import Settings, UnisamBackend, create_app
>>> app = create_app(UnisamBackend(Settings.from_env()))   # serve with uvicorn
"""

from .app import create_app
from .backend import Settings, UnisamBackend
from .images import ImageError

__all__ = ["ImageError", "Settings", "UnisamBackend", "create_app"]
