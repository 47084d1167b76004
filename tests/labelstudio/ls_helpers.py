"""Shared helpers for the Label Studio tests: the README's labeling config, test images with exact object
masks, Label Studio region payloads, brush-RLE decoding (the SDK's decoder), a small local image host
and the backend served by uvicorn in a thread."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import uvicorn
from label_studio_sdk.converter import brush
from PIL import Image

from unisam_labelstudio import UnisamBackend, create_app

FIXTURES = Path(__file__).parent / "fixtures"
README = Path(__file__).parents[2] / "plugins" / "labelstudio" / "README.md"
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a legacy Label Studio token (40 hex chars)
LABELS = ("Nucleus", "Cell")
EVERYTHING = {"points_per_side": 16, "pred_iou_thresh": 0.6, "stability_score_thresh": 0.9}


def readme_config() -> str:
    """The labeling config documented in plugins/labelstudio/README.md (its first ```xml block)."""
    text = README.read_text()
    start = text.index("```xml") + len("```xml")
    return text[start : text.index("```", start)].strip()


def disks_image(width: int = 240, height: int = 180, shift: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Bright disks on a dark background (like stained nuclei): image (H, W, 3) uint8, ground-truth
    masks (N, H, W) bool, and disks [(cx, cy, r)] in pixels. ``shift`` moves every disk right."""
    disks = [(60 + shift, 50, 22), (170 + shift, 70, 28), (110 + shift, 135, 18)]
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 20, np.uint8)
    masks = []
    for cx, cy, r in disks:
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        image[mask] = (230, 200, 180)
        masks.append(mask)
    return image, np.stack(masks), disks


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def keypoint(x_px: float, y_px: float, size: tuple[int, int], label: str = "Nucleus", positive: bool = True) -> dict:
    """A smart keypoint region as Label Studio's frontend sends it (percent coordinates)."""
    width, height = size
    return {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x_px * 100 / width, "y": y_px * 100 / height, "width": 0.5, "keypointlabels": [label]},
        "is_positive": positive,
        "id": "kp" + str(int(x_px)),
        "from_name": "points",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def rectangle(box_px, size: tuple[int, int], label: str = "Nucleus") -> dict:
    """A smart rectangle region (x1, y1, x2, y2 pixels -> percent x, y, width, height)."""
    width, height = size
    x1, y1, x2, y2 = box_px
    value = {
        "x": x1 * 100 / width,
        "y": y1 * 100 / height,
        "width": (x2 - x1) * 100 / width,
        "height": (y2 - y1) * 100 / height,
        "rotation": 0,
        "rectanglelabels": [label],
    }
    return {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
        "id": "rect",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }


def pixel_prompt(regions: list[dict], size: tuple[int, int]) -> dict:
    """The unisam prompt for smart regions, computed here independently: x_px = x% * W / 100,
    box = (x, y, x + w, y + h) in pixels, label 1 unless ``is_positive`` is false."""
    width, height = size
    points, labels, box = [], [], None
    for r in regions:
        v = r["value"]
        if r["type"] == "keypointlabels":
            points.append((v["x"] * width / 100, v["y"] * height / 100))
            labels.append(0 if r.get("is_positive") is False else 1)
        else:
            x1, y1 = v["x"] * width / 100, v["y"] * height / 100
            box = (x1, y1, x1 + v["width"] * width / 100, y1 + v["height"] * height / 100)
    return {"points": points or None, "labels": labels or None, "box": box}


def decode_brush(region: dict) -> np.ndarray:
    """(H, W) bool mask of a brushlabels region, decoded with the Label Studio SDK."""
    value = region["value"]
    assert value["format"] == "rle"
    rgba = brush.decode_rle(value["rle"]).reshape(region["original_height"], region["original_width"], 4)
    assert set(np.unique(rgba).tolist()) <= {0, 255}  # opaque brush pixels in every channel
    return rgba[:, :, 3] == 255


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ImageHost:
    """A local HTTP server standing in for an image host: serves ``files`` (path -> bytes; the query
    string is part of the path), 303 to the location of paths in ``redirects``, 401 for paths
    containing ``private`` unless the right token is sent, 404 otherwise, each after ``delay_s``
    seconds and with a Content-Length header unless ``sized`` is false; records (path, Authorization
    header) of every request."""

    def __init__(self, files: dict[str, bytes], redirects: dict[str, str] | None = None):
        self.files = dict(files)
        self.redirects = dict(redirects or {})
        self.delay_s = 0.0
        self.sized = True
        self.requests: list[tuple[str, str | None]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                auth = self.headers.get("Authorization")
                host.requests.append((self.path, auth))
                time.sleep(host.delay_s)
                body = host.files.get(self.path)
                if self.path in host.redirects:
                    self.send_response(303)
                    self.send_header("Location", host.redirects[self.path])
                    body = b""
                elif "private" in self.path and auth != f"Token {TOKEN}":
                    self.send_response(401)
                    body = b'{"detail": "Authentication credentials were not provided."}'
                elif body is None:
                    self.send_response(404)
                    body = b"not found"
                else:
                    self.send_response(200)
                if host.sized:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ImageHost:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class Recorder:
    """ASGI middleware keeping (method, path, body bytes) of every request to the wrapped app."""

    def __init__(self, app):
        self.app = app
        self.calls: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.calls.append((scope["method"], scope["path"], b"".join(chunks)))
            return message

        await self.app(scope, recording_receive, send)


class BackendServer:
    """The unisam backend app on ``url`` (uvicorn in a thread); ``backend`` is the live instance."""

    def __init__(self, backend: UnisamBackend):
        self.backend = backend
        self.recorder = Recorder(create_app(backend))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(uvicorn.Config(self.recorder, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> BackendServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
