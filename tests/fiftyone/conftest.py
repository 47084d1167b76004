"""A real FiftyOne with its own temporary database, plugins and model-zoo directories.

The environment is set before fiftyone is first imported (its config is read at import). The
plugins directory is the repository's ``plugins/``: FiftyOne must find exactly one plugin there.
"""

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
from fo_scenes import BACKGROUND_POINT, REPO, SIZE, centre, draw_scene, pixel_box
from PIL import Image

_TMP = tempfile.mkdtemp(prefix="unisam-fiftyone-")
os.environ.update(
    FIFTYONE_DATABASE_DIR=os.path.join(_TMP, "db"),
    FIFTYONE_PLUGINS_DIR=str(REPO / "plugins"),
    FIFTYONE_MODEL_ZOO_DIR=os.path.join(_TMP, "zoo"),
    FIFTYONE_DO_NOT_TRACK="true",
    FIFTYONE_DATABASE_VALIDATION="false",
)


def _stop_database_and_clean_up() -> None:
    """Registered before fiftyone is imported, so it runs after FiftyOne's exit handlers (which
    delete the non-persistent datasets): stop the mongod FiftyOne started, then remove its files."""
    import fiftyone.core.odm.database as fodb

    service = getattr(fodb, "_db_service", None)
    child = getattr(service, "child", None)
    if child is not None:
        service.stop()  # closes the service's stdin; it then shuts mongod down
        child.wait(timeout=30)
    shutil.rmtree(_TMP, ignore_errors=True)


atexit.register(_stop_database_and_clean_up)

import fiftyone as fo  # noqa: E402


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> list[tuple[str, list[np.ndarray]]]:
    """Three image files on disk with the ground-truth masks of their disks."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    out = []
    for i in range(3):
        image, masks = draw_scene(rng)
        path = folder / f"scene{i}.png"
        Image.fromarray(image).save(path)
        out.append((str(path), masks))
    return out


@pytest.fixture
def dataset(scenes):
    """A fresh dataset: per sample a ``gt`` Detections field (one box per disk, labels ``obj0..``)
    and a ``kp`` Keypoints field (per disk a foreground click at its centre and a background click,
    polarity in ``sam_labels``)."""
    ds = fo.Dataset()
    samples = []
    for path, masks in scenes:
        detections, keypoints = [], []
        for j, mask in enumerate(masks):
            x1, y1, x2, y2 = pixel_box(mask)
            box = [x1 / SIZE, y1 / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE]
            detections.append(fo.Detection(label=f"obj{j}", bounding_box=box))
            (cx, cy), (bx, by) = centre(mask), BACKGROUND_POINT
            points = [[cx / SIZE, cy / SIZE], [bx / SIZE, by / SIZE]]
            keypoints.append(fo.Keypoint(label=f"click{j}", points=points, sam_labels=[1, 0]))
        samples.append(
            fo.Sample(
                filepath=path,
                gt=fo.Detections(detections=detections),
                kp=fo.Keypoints(keypoints=keypoints),
            )
        )
    ds.add_samples(samples)
    yield ds
    ds.delete()
