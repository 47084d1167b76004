"""COCO export of synthetic samples (PNG images + one instances JSON with compressed RLE masks)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ...masks import masks_to_boxes, masks_to_rle
from .sample import Sample


def write_coco(samples: Iterable[Sample], out_dir: str | Path) -> Path:
    """Write ``images/NNNNNN.png`` (uint16 grey stays 16-bit) and ``annotations.json``: COCO instances
    with compressed-RLE masks, one category ``object``; each annotation also keeps ``object_id``, each
    image its ``kind``. Returns the JSON path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, s in enumerate(samples, 1):
        name = f"images/{image_id:06d}.png"
        Image.fromarray(s.image).save(out / name)
        h, w = s.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "height": h, "width": w, "kind": s.kind})
        areas = s.masks.sum(axis=(1, 2))
        for rle, area, (x1, y1, x2, y2), obj in zip(masks_to_rle(s.masks), areas, masks_to_boxes(s.masks), s.ids):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                "area": int(area), "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "iscrowd": 0,
                "object_id": int(obj),
            })
    path = out / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}))
    return path
