"""COCO export of synthetic samples (PNG images + one instances JSON with compressed RLE masks)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from .sample import Sample


def write_coco(samples: Iterable[Sample], out_dir: str | Path) -> Path:
    """Write ``images/NNNNNN.png`` (uint16 grey stays 16-bit) and ``annotations.json``: COCO instances
    with compressed-RLE masks, one category ``object``; each annotation also keeps ``object_id``, each
    image its ``kind``. Returns the JSON path."""
    from pycocotools import mask as mask_utils

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, s in enumerate(samples, 1):
        name = f"images/{image_id:06d}.png"
        Image.fromarray(s.image).save(out / name)
        h, w = s.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "height": h, "width": w, "kind": s.kind})
        if not len(s.masks):
            continue
        rles = mask_utils.encode(np.asfortranarray(s.masks.transpose(1, 2, 0).astype(np.uint8)))
        for rle, area, box, obj in zip(rles, mask_utils.area(rles), mask_utils.toBbox(rles), s.ids):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(area), "bbox": [float(b) for b in box], "iscrowd": 0, "object_id": int(obj),
            })
    path = out / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}))
    return path
