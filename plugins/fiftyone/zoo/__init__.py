"""unisam as a FiftyOne remote zoo model source, and the label conversions the unisam plugin shares.

FiftyOne copies this directory (``manifest.json`` + this module) into its model zoo when the source is
registered, then calls :func:`download_model` / :func:`load_model`::

    import fiftyone.zoo as foz
    foz.register_zoo_model_source("https://github.com/<owner>/<repo>")   # the repository holding this dir
    model = foz.load_zoo_model("unisam")                 # or load_zoo_model("unisam", model="edgesam")
    dataset.apply_model(model, label_field="masks", prompt_field="ground_truth")

Conventions (FiftyOne's): boxes are relative ``[x, y, w, h]`` with a top-left origin; an instance
mask covers exactly its box; keypoints are relative ``[x, y]`` with NaN for missing points, and SAM
point polarity is the keypoint's ``sam_labels`` list (1 = foreground, 0 = background).
"""

from __future__ import annotations

import os

import fiftyone.core.labels as fol
import fiftyone.core.models as fom
import numpy as np

import unisam


def prompts_from_labels(
    boxes: fol.Detections | None, keypoints: fol.Keypoints | None, width: int, height: int
) -> tuple[list[unisam.Prompt], list[str]]:
    """Prompts in pixels for a ``width x height`` image, and the id of the label each one came from.

    Each detection of ``boxes`` is a box prompt (edges ``x1 = x * width``, ``x2 = (x + w) * width``)
    named by the detection's label; each keypoint of ``keypoints`` is a point prompt (``x * width``,
    ``y * height``; NaN points dropped) named by the keypoint's label. Given both, box ``i`` and
    keypoint ``i`` form one prompt, as in FiftyOne's SAM integration: the counts must match and the
    box's label wins. Raises ``ValueError`` on mismatched counts or ``sam_labels``.
    """
    scale = np.array([width, height], dtype=np.float64)
    box_list = [] if boxes is None else boxes.detections
    point_list = [] if keypoints is None else keypoints.keypoints
    if boxes is not None and keypoints is not None and len(box_list) != len(point_list):
        raise ValueError(
            f"box and point prompts are paired in order, but there are {len(box_list)} detections and "
            f"{len(point_list)} keypoints"
        )
    prompts, ids = [], []
    for i in range(max(len(box_list), len(point_list))):
        det = box_list[i] if box_list else None
        kp = point_list[i] if point_list else None
        box = None
        if det is not None:
            x, y, w, h = det.bounding_box
            box = np.concatenate([[x, y] * scale, [x + w, y + h] * scale])
        points = labels = None
        if kp is not None:
            points = np.asarray(kp.points, dtype=np.float64).reshape(-1, 2)
            polarity = getattr(kp, "sam_labels", None)
            labels = np.ones(len(points)) if polarity is None else np.asarray(polarity, dtype=np.float64)
            if len(labels) != len(points):
                raise ValueError(f"keypoint {kp.id} has {len(points)} points but {len(labels)} sam_labels")
            visible = ~np.isnan(points).any(axis=1)
            points, labels = points[visible] * scale, labels[visible]
        source = det if det is not None else kp
        prompts.append(unisam.Prompt(points=points, point_labels=labels, box=box, label=source.label))
        ids.append(source.id)
    return prompts, ids


def to_detections(instances: unisam.Instances, prompt_ids: list[str] | None = None) -> fol.Detections:
    """Instances -> ``fo.Detections``: the pixel-edge box ``(x1, y1, x2, y2)`` becomes the relative box
    ``[x1 / W, y1 / H, (x2 - x1) / W, (y2 - y1) / H]``, the mask is cropped to it, the
    confidence is the predicted IoU and the label the prompt's; ``prompt_id`` (when ``prompt_ids``
    is given) is the id of the label that prompted it. Empty masks are left out."""
    height, width = instances.image_size
    labels = instances.labels or [None] * len(instances)
    detections = []
    for i, crop in enumerate(instances.crop_masks_to_boxes()):
        if not crop.any():
            continue
        x1, y1, x2, y2 = np.rint(instances.boxes[i]).tolist()
        det = fol.Detection(
            label=labels[i],
            bounding_box=[x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height],
            mask=crop,
            confidence=float(instances.scores[i]),
        )
        if prompt_ids is not None:
            det["prompt_id"] = prompt_ids[i]
        detections.append(det)
    return fol.Detections(detections=detections)


def segment_sample(
    image: np.ndarray,
    boxes: fol.Detections | None,
    keypoints: fol.Keypoints | None,
    predictor: unisam.Predictor,
) -> fol.Detections:
    """Instance masks for the prompts of one sample (image ``(H, W, 3)`` uint8), encoded once."""
    height, width = image.shape[:2]
    prompts, ids = prompts_from_labels(boxes, keypoints, width, height)
    if not prompts:
        return fol.Detections(detections=[])
    return to_detections(unisam.segment(image, prompts, model=predictor), ids)


class UnisamModel(fom.Model, fom.SamplesMixin):
    """A unisam predictor as a FiftyOne image model that outputs ``fo.Detections`` with masks.

    Prompts come from the fields that ``apply_model`` passes: ``prompt_field`` (a ``Detections``
    field gives boxes, a ``Keypoints`` field points), ``box_prompt_field``, ``point_prompt_field``.
    Without prompt fields it segments everything; ``everything`` holds the parameters of
    :func:`unisam.segment_everything` (points_per_side, pred_iou_thresh, ...).
    """

    def __init__(self, model: str | None = None, **everything):
        fom.SamplesMixin.__init__(self)
        self.predictor = unisam.get_model(model)
        self.everything = everything

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        if value:
            raise ValueError("unisam models read raw images; preprocessing cannot be enabled")

    def predict(self, arg: np.ndarray, sample=None) -> fol.Detections:
        """``arg``: ``(H, W, 3)`` uint8 image; ``sample``: its sample, holding the prompt fields."""
        fields = self.needs_fields or {}
        if not fields:
            return to_detections(unisam.segment_everything(arg, model=self.predictor, **self.everything))
        prompts = {"box_prompt_field": None, "point_prompt_field": None}
        for key, name in fields.items():
            value = sample.get_field(name) if sample is not None and sample.has_field(name) else None
            if value is None:
                raise ValueError(f"sample has no value in prompt field {name!r}")
            kind = {fol.Detections: "box_prompt_field", fol.Keypoints: "point_prompt_field"}.get(type(value))
            if kind is None or key not in ("prompt_field", kind):
                raise ValueError(
                    f"{key}={name!r} holds {type(value).__name__}; boxes need Detections, points Keypoints"
                )
            prompts[kind] = value
        return segment_sample(arg, prompts["box_prompt_field"], prompts["point_prompt_field"], self.predictor)


def download_model(model_name: str, model_path: str) -> None:
    """Nothing to fetch for the bundled model; official weights come through ``unisam weights pull``."""
    os.makedirs(model_path, exist_ok=True)


def load_model(model_name: str, model_path: str, model: str | None = None, **everything) -> UnisamModel:
    """``model``: a unisam model name (``unisam weights list``; default: unisam's default model)."""
    return UnisamModel(model, **everything)
