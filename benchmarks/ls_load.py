"""Load test of the Label Studio ML backend: N concurrent interactive /predict requests on loopback.

    python benchmarks/ls_load.py                       # 200 requests at once, 6 images, small caches
    python benchmarks/ls_load.py --requests 500 --images 10 --embedding-cache-mb 1

Starts the backend for real (``python -m unisam_labelstudio.server`` with the bundled ``unisam-tiny``
on 127.0.0.1, a separate process) and a stand-in Label Studio (a local HTTP server on 127.0.0.1 that
serves the task images as ``/data/upload/1/<name>.png`` and checks the token), then fires every
request at once from an asyncio client (httpx): smart keypoint and smart rectangle payloads as Label
Studio sends them, on a handful of synthetic images (bright disks, 640x480), so the embedding and
image caches are hit and, being smaller than the images, also evicted. Request N/2 is malformed (a
keypoint at x=150%) and must get its 400 without disturbing the others. Nothing leaves the machine.

Prints errors, latency p50/p95/max (seconds from send to answer, queueing included), requests per
second, the backend's RSS (MiB) when ready, at its peak (sampled every 50 ms) and after, and both
caches' entries/bytes/limits from ``/health``. :func:`run` returns the same as a :class:`LoadReport`
(tests/labelstudio/test_ls_load.py checks every mask against the core).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import psutil
from PIL import Image
from tqdm import tqdm

# The region payloads Label Studio sends, as the Label Studio tests record them (one definition for both).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "labelstudio"))
import ls_helpers  # noqa: E402

TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a legacy Label Studio token (40 hex chars)
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="Nucleus"/></BrushLabels>
  <KeyPointLabels name="points" toName="image" smart="true"><Label value="Nucleus" smart="true"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Nucleus"/></RectangleLabels>
</View>"""
WIDTH, HEIGHT = 640, 480
BAD_MESSAGE = "outside 0-100"  # what the malformed request's answer must say


@dataclass
class Scene:
    """A synthetic task image (H, W, 3) uint8 and its disks [(cx, cy, r)] in pixels."""

    image: np.ndarray
    disks: list[tuple[int, int, int]]


def make_scenes(count: int, seed: int = 0) -> list[Scene]:
    """``count`` different 640x480 images of 4 bright disks each on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    scenes = []
    for _ in range(count):
        image = np.full((HEIGHT, WIDTH, 3), 20, np.uint8)
        disks = []
        for cx in (110, 260, 410, 560):
            cy, r = int(rng.integers(100, 380)), int(rng.integers(25, 45))
            image[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (230, 200, 180)
            disks.append((cx, cy, r))
        scenes.append(Scene(image, disks))
    return scenes


def keypoint(x: float, y: float) -> dict:
    """A smart keypoint region at pixel (x, y), in Label Studio's percent coordinates."""
    return ls_helpers.keypoint(x, y, (WIDTH, HEIGHT))


def rectangle(x1: float, y1: float, x2: float, y2: float) -> dict:
    """A smart rectangle region from pixel edges."""
    return ls_helpers.rectangle((x1, y1, x2, y2), (WIDTH, HEIGHT))


def predict_body(task_id: int, image_url: str, region: dict) -> dict:
    """An interactive /predict body as Label Studio 1.23 sends it."""
    return {
        "tasks": [{"id": task_id, "data": {"image": image_url}, "annotations": [], "predictions": []}],
        "project": "1.1700000000",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": {"result": [region]}},
    }


@dataclass
class Job:
    """One request: the scene index it clicks on (-1: the malformed one) and its body."""

    scene: int
    body: dict

    @property
    def region(self) -> dict:
        return self.body["params"]["context"]["result"][0]


def make_jobs(count: int, scenes: list[Scene], seed: int = 1) -> list[Job]:
    """``count`` requests on random scenes, alternating keypoints (disk centres) and rectangles
    (around a disk); request ``count // 2`` has a keypoint at x=150% (malformed)."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(count):
        s = int(rng.integers(len(scenes)))
        cx, cy, r = scenes[s].disks[int(rng.integers(4))]
        region = keypoint(cx, cy) if i % 2 == 0 else rectangle(cx - r - 4, cy - r - 4, cx + r + 4, cy + r + 4)
        if i == count // 2:
            s, region = -1, {**keypoint(cx, cy), "value": {**keypoint(cx, cy)["value"], "x": 150.0}}
        jobs.append(Job(s, predict_body(1000 + i, f"/data/upload/1/scene{max(s, 0)}.png", region)))
    return jobs


@contextmanager
def label_studio_stand_in(scenes: list[Scene]) -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 serving the scenes as Label Studio uploads (401 without the
    token, 404 for other paths); yields its URL."""
    files = {}
    for i, scene in enumerate(scenes):
        buffer = io.BytesIO()
        Image.fromarray(scene.image).save(buffer, format="PNG")
        files[f"/data/upload/1/scene{i}.png"] = buffer.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = files.get(self.path)
            status = 401 if self.headers.get("Authorization") != f"Token {TOKEN}" else 404 if body is None else 200
            body = body if status == 200 else b"{}"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def backend_process(label_studio: str, image_cache_mb: float, embedding_cache_mb: float) -> Iterator[tuple]:
    """The backend (``unisam-tiny``) in its own process on 127.0.0.1; yields (url, psutil.Process)
    once ``/health`` says the model is loaded."""
    port = _free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": label_studio,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "UNISAM_IMAGE_CACHE_MB": str(image_cache_mb),
        "UNISAM_EMBEDDING_CACHE_MB": str(embedding_cache_mb),
    }
    command = [sys.executable, "-m", "unisam_labelstudio.server", "--host", "127.0.0.1", "--port", str(port),
               "--model", "unisam-tiny", "--log-level", "ERROR"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the backend did not start: {process.stdout.read().decode()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).json()["model_loaded"]:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class LoadReport:
    """What :func:`run` measured. statuses, latencies_s, answers: per job (answers: the JSON body);
    (``jobs`` holds each wave's jobs in turn); rss_before_mib / rss_peak_mib: the backend's resident
    memory when ready and at its peak (sampled every 50 ms); rss_waves_mib: after each wave; caches:
    ``/health``'s caches after the run; wall_s: first send to last answer, summed over the waves."""

    scenes: list[Scene]
    jobs: list[Job]
    statuses: list[int]
    latencies_s: list[float]
    answers: list[dict]
    wall_s: float
    rss_before_mib: float
    rss_peak_mib: float
    rss_waves_mib: list[float]
    caches: dict

    @property
    def good(self) -> list[int]:
        """Indices of the well-formed requests."""
        return [i for i, job in enumerate(self.jobs) if job.scene >= 0]

    @property
    def errors(self) -> list[str]:
        """One line per well-formed request that did not get a 200."""
        return [f"request {i}: HTTP {self.statuses[i]} {self.answers[i]}" for i in self.good if self.statuses[i] != 200]


async def _fire(url: str, jobs: list[Job], timeout_s: float) -> tuple[list[int], list[float], list[dict], float]:
    limits = httpx.Limits(max_connections=len(jobs), max_keepalive_connections=len(jobs))
    progress = tqdm(total=len(jobs), desc="requests", unit="req", leave=False)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def one(job: Job) -> tuple[int, float, dict]:
            start = time.perf_counter()
            response = await client.post("/predict", json=job.body)
            progress.update()
            return response.status_code, time.perf_counter() - start, response.json()

        start = time.perf_counter()
        done = await asyncio.gather(*(one(job) for job in jobs))
        wall = time.perf_counter() - start
    progress.close()
    statuses, latencies, answers = (list(column) for column in zip(*done, strict=True))
    return statuses, latencies, answers, wall


def run(
    requests: int = 200,
    images: int = 6,
    image_cache_mb: float = 2.7,
    embedding_cache_mb: float = 0.4,
    waves: int = 2,
    timeout_s: float = 300.0,
) -> LoadReport:
    """Start the stand-in Label Studio and the backend, fire ``requests`` requests at once on
    ``images`` scenes, ``waves`` times one after the other (the RSS after each shows whether memory
    keeps growing), and measure. Defaults: caches for about 3 images (2.7 MB of 0.9 MB images) and 3
    unisam-tiny embeddings (0.4 MB of 128 KiB ones), so both are hit and evicted."""
    scenes = make_scenes(images)
    jobs = make_jobs(requests, scenes)
    with label_studio_stand_in(scenes) as label_studio, backend_process(
        label_studio, image_cache_mb, embedding_cache_mb
    ) as (url, process):
        rss_before = process.memory_info().rss
        peak = [rss_before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.05):
                peak[0] = max(peak[0], process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        statuses, latencies, answers, wall, rss_waves = [], [], [], 0.0, []
        for _ in range(waves):
            done = asyncio.run(_fire(url, jobs, timeout_s))
            statuses += done[0]
            latencies += done[1]
            answers += done[2]
            wall += done[3]
            rss_waves.append(process.memory_info().rss / 2**20)
        sampling.set()
        sampler.join()
        caches = httpx.get(url + "/health", timeout=10).json()["caches"]
    peak_mib = max(peak[0] / 2**20, *rss_waves)
    return LoadReport(
        scenes, jobs * waves, statuses, latencies, answers, wall, rss_before / 2**20, peak_mib, rss_waves, caches
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests, all sent at once (200)")
    parser.add_argument("--images", type=int, default=6, help="different task images (6)")
    parser.add_argument("--image-cache-mb", type=float, default=2.7, help="UNISAM_IMAGE_CACHE_MB (2.7: ~3 images)")
    parser.add_argument("--embedding-cache-mb", type=float, default=0.4, help="UNISAM_EMBEDDING_CACHE_MB (0.4: 3)")
    parser.add_argument("--waves", type=int, default=2, help="times the requests are fired, one after the other (2)")
    args = parser.parse_args(argv)
    report = run(args.requests, args.images, args.image_cache_mb, args.embedding_cache_mb, args.waves)
    good = report.good
    latencies = np.array([report.latencies_s[i] for i in good])
    bad = [i for i, job in enumerate(report.jobs) if job.scene < 0]
    print(f"{args.waves} x {args.requests} concurrent interactive /predict requests on {len(report.scenes)} images "
          f"({WIDTH}x{HEIGHT}), unisam-tiny, {os.cpu_count()} CPU cores")
    print(f"errors (well-formed requests without HTTP 200): {len(report.errors)}")
    for line in report.errors[:5]:
        print("  " + line)
    for i in bad:
        print(f"malformed request {i}: HTTP {report.statuses[i]} {report.answers[i].get('error')!r}")
    print(f"latency (s): p50 {np.percentile(latencies, 50):.3f}  p95 {np.percentile(latencies, 95):.3f}  "
          f"max {latencies.max():.3f}")
    print(f"throughput: {len(report.jobs) / report.wall_s:.1f} requests/s ({report.wall_s:.2f} s for all)")
    after = "  ".join(f"{rss:.1f}" for rss in report.rss_waves_mib)
    print(f"backend RSS (MiB): ready {report.rss_before_mib:.1f}  peak {report.rss_peak_mib:.1f}  "
          f"after each wave {after}")
    print("| cache | entries | MB | limit MB | hits | misses |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, c in report.caches.items():
        print(f"| {name} | {c['entries']} | {c['bytes'] / 2**20:.2f} | {c['max_bytes'] / 2**20:.2f} | "
              f"{c['hits']} | {c['misses']} |")
    return 1 if report.errors or any(not 400 <= report.statuses[i] < 600 for i in bad) else 0


if __name__ == "__main__":
    raise SystemExit(main())
