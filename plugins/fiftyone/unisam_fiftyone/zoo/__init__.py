"""unisam as a FiftyOne remote zoo model source, and the label conversions the unisam plugin shares
(images: prompts and masks; videos: the keyframes of ``unisam.track``).

FiftyOne copies this directory (``manifest.json`` + this module) into its model zoo when the source is
registered, then calls :func:`download_model` / :func:`load_model`::

    import fiftyone.zoo as foz
    import unisam_fiftyone
    unisam_fiftyone.register_zoo_source()                # from the installed package or a checkout
    # or foz.register_zoo_model_source(URL)              # an archive of this directory, over HTTP(S)
    model = foz.load_zoo_model("unisam")                 # or load_zoo_model("unisam", model="edgesam")
    dataset.apply_model(model, label_field="masks", prompt_field="ground_truth")

Conventions (FiftyOne's): boxes are relative ``[x, y, w, h]`` with a top-left origin; an instance
mask covers exactly its box; keypoints are relative ``[x, y]`` with NaN for missing points, and SAM
point polarity is the keypoint's ``sam_labels`` list (1 = foreground, 0 = background).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import fiftyone.core.labels as fol
import fiftyone.core.models as fom
import numpy as np

import unisam


def prompts_from_labels(
    boxes: fol.Detections | None, keypoints: fol.Keypoints | None, width: int, height: int
) -> tuple[list[unisam.Prompt], list[str]]:
    """Prompts in pixels for a ``width x height`` image, and the id of the label each one came from.

    Each detection of ``boxes`` is a box prompt (edges ``x1 = x * width``, ``x2 = (x + w) * width``)
    named by the detection's label, cut to the image where it overhangs it (relative boxes often
    reach a little past 0 or 1; unisam takes boxes inside the image); each keypoint of ``keypoints`` is a point prompt (``x * width``,
    ``y * height``; NaN points dropped) named by the keypoint's label. Given both, box ``i`` and
    keypoint ``i`` form one prompt, as in FiftyOne's SAM integration: the counts must match and the
    box's label wins. Raises ``ValueError`` on mismatched counts or ``sam_labels``, or a box with
    no area inside the image.
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
            box = _box_inside(det, width, height)
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


def _box_inside(detection: fol.Detection, width: int, height: int) -> np.ndarray:
    """A detection's relative ``[x, y, w, h]`` as pixel edges ``(x1, y1, x2, y2)`` cut to the
    ``width x height`` image (unchanged where it has no area there: NaN or inverted boxes are the
    core's to refuse). Raises ``ValueError`` for a box that lies wholly outside the image."""
    x, y, w, h = detection.bounding_box
    box = np.array([x * width, y * height, (x + w) * width, (y + h) * height], dtype=np.float64)
    inside = np.clip(box, 0.0, [width, height, width, height])
    if inside[2] > inside[0] and inside[3] > inside[1]:
        return inside
    if w > 0 and h > 0:  # a proper box, but none of it on the image
        raise ValueError(
            f"detection {detection.id} (label {detection.label!r}) has bounding box "
            f"{[round(float(v), 4) for v in (x, y, w, h)]}, which lies outside the image (relative x, y, w, h)"
        )
    return box


def to_detections(
    instances: unisam.Instances, prompt_ids: list[str] | None = None, indices: Sequence[int] | None = None
) -> fol.Detections:
    """Instances -> ``fo.Detections``: the pixel-edge box ``(x1, y1, x2, y2)`` becomes the relative box
    ``[x1 / W, y1 / H, (x2 - x1) / W, (y2 - y1) / H]``, the mask is cropped to it, the
    confidence is the predicted IoU and the label the prompt's (labelled by ``unisam.label``: the
    confidence is the label's probability, the IoU ``mask_confidence``, the runners-up
    ``label_alternatives`` / ``label_alternative_scores``); ``prompt_id`` (when ``prompt_ids``
    is given) is the id of the label that prompted it, ``index`` (when ``indices`` is given, one per
    instance) its object id. Empty masks are left out."""
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
        if instances.label_scores is not None:
            set_label(det, labels[i], instances.label_scores[i], (instances.label_topk or [[]] * len(instances))[i])
        if prompt_ids is not None:
            det["prompt_id"] = prompt_ids[i]
        if indices is not None:
            det.index = int(indices[i])
        detections.append(det)
    return fol.Detections(detections=detections)


def set_label(detection: fol.Detection, name: str | None, score: float, ranked: Sequence[tuple[str, float]]) -> None:
    """Write a ``unisam.label`` result into a detection: ``label``, ``confidence`` = its probability
    (the mask's own confidence kept once as ``mask_confidence``), the runners-up in
    ``label_alternatives`` / ``label_alternative_scores``."""
    if not detection.has_field("mask_confidence"):
        detection["mask_confidence"] = detection.confidence
    detection.label, detection.confidence = name, float(score)
    detection["label_alternatives"] = [n for n, _ in ranked]
    detection["label_alternative_scores"] = [float(p) for _, p in ranked]


def from_detections(detections: Sequence[fol.Detection], width: int, height: int) -> unisam.Instances:
    """Detections with instance masks -> ``Instances`` of a ``height x width`` image: full-frame masks,
    ``scores`` their confidences (1 where unset), ``labels`` theirs (None when none has one).
    Raises ``ValueError`` when a detection has no mask."""
    if any(not d.has_mask for d in detections):
        raise ValueError("some detections have no instance mask (give a field with masks, e.g. from segment)")
    if not detections:
        return unisam.Instances.empty(height, width)
    masks = [d.to_segmentation(frame_size=(width, height), target=1).mask.astype(bool) for d in detections]
    scores = [1.0 if d.confidence is None else d.confidence for d in detections]
    names = [d.label for d in detections]
    return unisam.Instances.from_masks(
        np.stack(masks), np.array(scores, np.float32), labels=names if any(n is not None for n in names) else None
    )


def keyframes_from_labels(
    labels: Mapping[int, fol.Detections | fol.Keypoints], width: int, height: int, count: int
) -> tuple[dict[int, dict[int, unisam.Prompt] | unisam.Instances], list[int]]:
    """The ``start`` of :func:`unisam.track` from the prompt labels of a video's frames, and the
    object index each of its ids stands for (id ``k`` is ``indices[k - 1]``).

    labels: {FiftyOne frame number (1-based): the frame's prompts} for a ``width x height`` video of
    ``count`` frames. The object id of a detection or keypoint is its ``index``, else its position on
    the frame (1, 2, ...); the same id on several frames names the same object (a later keyframe
    corrects it). A detection is a box prompt (see :func:`prompts_from_labels`), a keypoint a point
    prompt; detections with masks give the object's mask itself (then every detection of that frame
    needs one). Keyframes are 0-based frame indices. Raises ``ValueError`` on prompts beyond the
    video, an index used twice on one frame or a frame mixing masks and boxes.
    """
    beyond = sorted(n for n in labels if not 1 <= n <= count)
    if beyond:
        raise ValueError(f"prompts on frame(s) {beyond}, beyond the video's {count} frames (1..{count})")
    frames = {}
    for number, label in sorted(labels.items()):
        if isinstance(label, fol.Detections):
            items, (prompts, _) = label.detections, prompts_from_labels(label, None, width, height)
        elif isinstance(label, fol.Keypoints):
            items, (prompts, _) = label.keypoints, prompts_from_labels(None, label, width, height)
        else:
            raise ValueError(f"frame {number}: prompts must be Detections or Keypoints, got {type(label).__name__}")
        if not items:
            continue
        index = [k if item.index is None else int(item.index) for k, item in enumerate(items, 1)]
        twice = sorted({i for i in index if index.count(i) > 1})
        if twice:
            raise ValueError(f"frame {number}: object index {twice} is given twice; each object needs its own index")
        frames[number] = (items, prompts, index)
    indices = sorted({i for _, _, index in frames.values() for i in index})
    core_id = {i: k for k, i in enumerate(indices, 1)}  # unisam ids are > 0; FiftyOne indices may be any int
    start = {}
    for number, (items, prompts, index) in frames.items():
        ids = [core_id[i] for i in index]
        masked = [isinstance(item, fol.Detection) and item.has_mask for item in items]
        if any(masked) and not all(masked):
            raise ValueError(
                f"frame {number}: some detections have masks and some do not; unisam.track takes either the "
                "objects' masks or box prompts on one frame"
            )
        if all(masked):
            found = from_detections(items, width, height)
            start[number - 1] = unisam.Instances.from_masks(
                found.masks, found.scores, ids=np.array(ids, np.int64), labels=found.labels
            )
        else:
            start[number - 1] = dict(zip(ids, prompts))
    return start, indices


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
