"""The Label Studio ML backend: ``predict(tasks, context)`` and ``fit(event, data)`` on top of unisam.

It holds no model logic: it reads the labeling config, fetches task images, turns smart-tool clicks
into a :class:`unisam.Prompt` and unisam's masks into brush regions. On video (``<Video>`` +
``<VideoRectangle smart="true">``), a box drawn on one frame is followed by :func:`unisam.track` over
the next frames and goes back as the region's extended keyframe sequence. The model is the process-wide
shared predictor (:func:`unisam.get_model`), loaded on first use, so every annotator's requests share
one model and one memory-bounded embedding cache: the first click on an image runs the encoder,
later clicks only the decoder.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import unisam
from label_studio_sdk.label_interface import LabelInterface

from .images import FetchPolicy, ImageError, TaskImages
from .regions import (
    VIDEO_BOX_TYPE,
    VideoBox,
    brush_mask,
    brush_region,
    parse_context,
    parse_video_context,
    video_box_item,
    video_box_region,
)

logger = logging.getLogger(__name__)

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")
AUTO_LABEL = ("off", "text", "examples")
EXAMPLE_TASKS = 50  # annotated tasks per project kept as examples for auto_label="examples" (newest)


@dataclass(frozen=True)
class Settings:
    """Backend configuration; :meth:`from_env` reads the environment variables named below.

    model (``UNISAM_MODEL``): a registered model name or a directory written by ``unisam export``;
    None = :func:`unisam.default_model`. label_studio_url (``LABEL_STUDIO_URL``, or
    ``LABEL_STUDIO_HOST``) and api_key (``LABEL_STUDIO_API_KEY``, or ``LABEL_STUDIO_ACCESS_TOKEN``):
    where task images live and the token to fetch them; without them, the hostname and token Label
    Studio sends to ``/setup`` are used. everything (``UNISAM_EVERYTHING_PARAMS``, a JSON object):
    default :func:`unisam.segment_everything` parameters for batch predictions. basic_auth
    (``BASIC_AUTH_USER`` + ``BASIC_AUTH_PASS``): require these HTTP basic credentials on every request.
    image_cache_mb (``UNISAM_IMAGE_CACHE_MB``, default 256): memory for recently fetched images.
    embedding_cache_mb (``UNISAM_EMBEDDING_CACHE_MB``): memory for image embeddings of the process-wide
    shared model (None: the core's default). allowed_image_hosts (``UNISAM_ALLOWED_IMAGE_HOSTS``,
    comma-separated ``host``, ``host:port``, ``*.domain`` or ``http(s)://host[:port]``): hosts besides
    Label Studio that task images may be fetched from. local_files_root
    (``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``): local-storage files under it are read from disk.
    max_download_mb (``UNISAM_MAX_DOWNLOAD_MB``, default 4096): a task image or video larger than this
    is not downloaded.
    video_track_frames (``UNISAM_VIDEO_TRACK_FRAMES``, default 100): how many frames after the drawn
    one a smart video box is tracked over (fewer at the end of the video). label_model
    (``UNISAM_LABEL_MODEL``): the CLIP model that names regions from the config's labels (open_clip
    ``arch/pretrained`` or an exported folder; None = :data:`unisam.DEFAULT_LABEL_MODEL`).
    """

    model: str | None = None
    label_studio_url: str | None = None
    api_key: str | None = None
    everything: Mapping[str, object] = field(default_factory=dict)
    basic_auth: tuple[str, str] | None = None
    image_cache_mb: float = 256
    embedding_cache_mb: float | None = None
    allowed_image_hosts: tuple[str, ...] = ()
    local_files_root: str | None = None
    max_download_mb: float = 4096
    video_track_frames: int = 100
    label_model: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Settings from environment variables (empty values count as unset)."""
        get = lambda *names: next((environ[n] for n in names if environ.get(n)), None)  # noqa: E731
        everything = get("UNISAM_EVERYTHING_PARAMS")
        try:
            params = json.loads(everything) if everything else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"UNISAM_EVERYTHING_PARAMS is not valid JSON: {error}") from None
        user, password = get("BASIC_AUTH_USER"), get("BASIC_AUTH_PASS")
        track_frames = get("UNISAM_VIDEO_TRACK_FRAMES") or "100"
        if not track_frames.isdigit() or int(track_frames) < 1:
            raise ValueError(f"UNISAM_VIDEO_TRACK_FRAMES must be a whole number of frames >= 1; got {track_frames!r}")
        embedding_mb = get("UNISAM_EMBEDDING_CACHE_MB")
        hosts = tuple(h.strip() for h in (get("UNISAM_ALLOWED_IMAGE_HOSTS") or "").split(",") if h.strip())
        FetchPolicy.create(hosts)  # a bad entry stops the server at start
        return cls(
            model=get("UNISAM_MODEL"),
            label_studio_url=get("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"),
            api_key=get("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"),
            everything=check_everything_params(params, "UNISAM_EVERYTHING_PARAMS"),
            basic_auth=(user, password) if user and password else None,
            image_cache_mb=_megabytes(get("UNISAM_IMAGE_CACHE_MB") or "256", "UNISAM_IMAGE_CACHE_MB"),
            embedding_cache_mb=_megabytes(embedding_mb, "UNISAM_EMBEDDING_CACHE_MB") if embedding_mb else None,
            allowed_image_hosts=hosts,
            local_files_root=get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LOCAL_FILES_DOCUMENT_ROOT"),
            max_download_mb=_megabytes(get("UNISAM_MAX_DOWNLOAD_MB") or "4096", "UNISAM_MAX_DOWNLOAD_MB"),
            video_track_frames=int(track_frames),
            label_model=get("UNISAM_LABEL_MODEL"),
        )


def _megabytes(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{name} must be a number of megabytes >= 0; got {text!r}")
    return value


def check_everything_params(params: object, source: str) -> dict:
    """Validate segment-everything options (:class:`unisam.EverythingParams` names and values)."""
    if not isinstance(params, Mapping):
        raise ValueError(f"{source} must be a JSON object of segment-everything parameters; got {params!r}")
    try:
        unisam.EverythingParams().replace(**params)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {error}") from None
    return dict(params)


@dataclass(frozen=True)
class ProjectSetup:
    """What ``/setup`` told the backend about one project.

    hostname, access_token: Label Studio's address and the project creator's token (used when the
    environment gives none). everything: segment-everything parameters from the ML backend's extra
    params; label: the brush label of batch predictions (default: the first one of the config), or
    of regions that auto-labeling leaves unnamed. auto_label (extra param): "off", "text" (each batch
    region named from the config's brush labels with a CLIP model) or "examples" (named like the
    regions of the project's submitted annotations; no CLIP needed). auto_label_clicks: also name
    the interactive (clicked) region instead of keeping the clicked label. label_model: the CLIP
    model for "text" (default: the backend's setting). auto_label_unknown: a region whose best label
    probability is below this (0..1) is not named (it keeps ``label``).
    """

    hostname: str | None = None
    access_token: str | None = None
    everything: Mapping[str, object] = field(default_factory=dict)
    label: str | None = None
    auto_label: str = "off"
    auto_label_clicks: bool = False
    label_model: str | None = None
    unknown: float = 0.0


@dataclass(frozen=True)
class BrushTarget:
    """The ``<BrushLabels>`` control that receives masks: its name, the ``<Image>`` tag it labels, the
    task data key of that image (``$image`` -> ``image``) and its label values."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]

    @classmethod
    def from_config(cls, label_config: str, to_name: str | None = None) -> BrushTarget:
        """The first BrushLabels control of an Image (the one of image ``to_name`` if given)."""
        interface = _interface(label_config)
        name_filter = None if to_name is None else (lambda name: name == to_name)
        try:
            from_name, image, data_key = interface.get_first_tag_occurence(
                "BrushLabels", "Image", to_name_filter=name_filter
            )
        except ValueError:
            target = "an <Image>" if to_name is None else f"the <Image name={to_name!r}> that was clicked"
            raise ValueError(
                f"the labeling config has no <BrushLabels> control for {target}: unisam answers with brush "
                "masks, so add <BrushLabels name=... toName=...> with the same labels as the smart tools "
                '(or, for video, <Video> with a <VideoRectangle smart="true">)'
            ) from None
        return cls(from_name, image, data_key, tuple(interface.get_control(from_name).labels))

    def check_label(self, label: str | None) -> str:
        """``label`` if it is one of the brush labels; None -> the first brush label."""
        if label is None:
            if not self.labels:
                raise ValueError(f"<BrushLabels name={self.from_name!r}> has no <Label> values")
            return self.labels[0]
        if label not in self.labels:
            raise ValueError(
                f"label {label!r} is not a label of <BrushLabels name={self.from_name!r}> {list(self.labels)}: "
                "give the smart tools and the brush the same label values"
            )
        return label


@dataclass(frozen=True)
class VideoTarget:
    """The smart ``<VideoRectangle>`` control that receives tracked boxes: its name, the ``<Video>`` tag
    it labels, that video's task data key (``$video`` -> ``video``) and the values of the
    ``<Labels>`` of that video (empty without one)."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]

    @classmethod
    def from_config(cls, label_config: str, to_name: str | None = None) -> VideoTarget:
        """The first VideoRectangle control of a Video (the one of video ``to_name`` if given)."""
        interface = _interface(label_config)
        name_filter = None if to_name is None else (lambda name: name == to_name)
        try:
            from_name, video, data_key = interface.get_first_tag_occurence(
                "VideoRectangle", "Video", to_name_filter=name_filter
            )
        except ValueError:
            target = "a <Video>" if to_name is None else f"the <Video name={to_name!r}> that was drawn on"
            raise ValueError(f"the labeling config has no <VideoRectangle> control for {target}") from None
        labels = [c.labels for c in interface.controls if c.tag == "Labels" and video in c.to_name]
        return cls(from_name, video, data_key, tuple(labels[0]) if labels else ())

    def check_label(self, label: str | None) -> str | None:
        """``label`` if it is one of the video's labels (None stays None: a box without a label)."""
        if label is not None and self.labels and label not in self.labels:
            raise ValueError(f"label {label!r} is not a label of <Video name={self.to_name!r}> {list(self.labels)}")
        return label


def _interface(label_config: str) -> LabelInterface:
    if not isinstance(label_config, str) or not label_config.strip():
        raise ValueError("the request has no label_config (the project's labeling config XML)")
    try:
        return LabelInterface(label_config)
    except Exception as error:  # the SDK raises its own XML and validation error types
        raise ValueError(f"cannot parse the labeling config: {error}") from None


def _is_video_config(label_config: str) -> bool:
    """Whether the config has a smart VideoRectangle and no BrushLabels (video projects get boxes only)."""
    try:
        BrushTarget.from_config(label_config)
    except ValueError:
        try:
            VideoTarget.from_config(label_config)
        except ValueError:
            return False
        return True
    return False


class UnisamBackend:
    """unisam as a Label Studio ML backend; thread-safe, one instance serves every project."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        policy = FetchPolicy.create(
            self.settings.allowed_image_hosts, self.settings.local_files_root, self.settings.max_download_mb
        )
        self.images = TaskImages(int(self.settings.image_cache_mb * 2**20), policy)
        self._projects: dict[str, ProjectSetup] = {}
        self._lock = threading.Lock()  # guards _projects
        self._model_lock = threading.Lock()  # a slow model load must not block /setup
        self._predictor: unisam.Predictor | None = None
        #: per project, {task id: (image, labelled Instances)} from submitted annotations, oldest first
        self._examples: dict[str, dict[object, tuple[np.ndarray, unisam.Instances]]] = {}
        #: the configured model: a registered name, or the name of an export directory
        self.model_name = unisam.model_name(self.settings.model)

    # ------------------------------------------------------------------ model
    @property
    def model_version(self) -> str:
        """The version Label Studio stores with predictions (cheap: does not load the model)."""
        return self.model_name

    @property
    def model_loaded(self) -> bool:
        return self._predictor is not None

    @property
    def predictor(self) -> unisam.Predictor:
        """The shared predictor, loaded on first use (:func:`unisam.get_model` for registered names);
        ``embedding_cache_mb`` sets its embedding cache's limit. Raises RuntimeError when the model
        cannot be loaded (e.g. its weights are not downloaded)."""
        with self._model_lock:
            if self._predictor is None:
                try:
                    predictor = unisam.get_model(self.settings.model)
                except Exception as error:
                    raise RuntimeError(f"cannot load model {self.model_name!r}: {error}") from error
                if self.settings.embedding_cache_mb is not None:
                    predictor.cache.max_bytes = int(self.settings.embedding_cache_mb * 2**20)
                self._predictor = predictor
            return self._predictor

    def cache_stats(self) -> dict:
        """Entries, bytes, byte limit, hits and misses of the image cache and (once the model is
        loaded) the embedding cache: ``{"images": {...}, "embeddings": {...}}``."""
        caches = {"images": self.images.cache}
        if self._predictor is not None:
            caches["embeddings"] = self._predictor.cache
        return {
            name: {"entries": len(c), "bytes": c.nbytes, "max_bytes": c.max_bytes, "hits": c.hits, "misses": c.misses}
            for name, c in caches.items()
        }

    # ------------------------------------------------------------------ protocol
    def setup(
        self,
        project: str | None,
        label_config: str | None = None,
        *,
        hostname: str | None = None,
        access_token: str | None = None,
        extra_params: Mapping | None = None,
    ) -> str:
        """Remember a project's connection details and extra params; returns the model version.

        extra_params: segment-everything parameters plus an optional ``label`` for batch predictions.
        """
        extra = dict(extra_params or {})
        label = extra.pop("label", None)
        auto = extra.pop("auto_label", "off")
        if auto not in AUTO_LABEL:
            raise ValueError(f"extra param auto_label must be one of {AUTO_LABEL}, got {auto!r}")
        clicks = extra.pop("auto_label_clicks", False)
        if not isinstance(clicks, bool):
            raise ValueError(f"extra param auto_label_clicks must be true or false, got {clicks!r}")
        label_model = extra.pop("label_model", None)
        unknown = extra.pop("auto_label_unknown", 0.0)
        if isinstance(unknown, bool) or not isinstance(unknown, (int, float)) or not 0 <= unknown <= 1:
            raise ValueError(f"extra param auto_label_unknown must be a number in [0, 1], got {unknown!r}")
        setup = ProjectSetup(
            hostname, access_token, check_everything_params(extra, "extra params"), label, auto, clicks, label_model,
            float(unknown),
        )
        if auto == "text":  # fail here, not at every prediction, when the CLIP model is not there
            try:
                unisam.get_label_model(label_model or self.settings.label_model)
            except (ValueError, OSError, ImportError) as error:
                raise ValueError(f"auto_label='text' needs a CLIP model: {error}") from None
        if label is not None and label_config:
            if _is_video_config(label_config):
                VideoTarget.from_config(label_config).check_label(label)
            else:
                BrushTarget.from_config(label_config).check_label(label)
        with self._lock:
            self._projects[_project_id(project)] = setup
        return self.model_version

    def predict(
        self, tasks: list[dict], context: dict | None = None, *, label_config: str, project: str | None = None
    ) -> list[dict]:
        """One prediction ``{"result": [regions], "score", "model_version"}`` per task.

        With a smart-tool ``context`` (interactive labeling; one task), the clicked object as one
        brush region with the clicked label; bad input raises ValueError, an unreachable image
        :class:`~unisam_labelstudio.images.ImageError`. Without (batch pre-labeling), every object
        found by :func:`unisam.segment_everything` as one brush region each; a task whose image fails
        gets ``{"error": message}`` instead, which Label Studio skips, so the other tasks still get theirs.

        With a smart ``videorectangle`` in the context, the box tracked over the following frames (one
        ``videorectangle`` region). Video tasks get no batch predictions (an empty result each).
        """
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise ValueError("'tasks' must be a list of task objects")
        setup = self._setup_of(project)
        if context:
            if len(tasks) != 1:
                raise ValueError(f"an interactive request (with a context) needs exactly one task, got {len(tasks)}")
            if _has_video_box(context):
                return [self._predict_video(tasks[0], context, label_config, setup)]
            return [self._predict_clicks(tasks[0], context, label_config, setup, project)]
        if _is_video_config(label_config):
            logger.info("batch predictions of video tasks: none (draw a smart VideoRectangle to track a box)")
            return [{"result": [], "score": 0.0, "model_version": self.model_version} for _ in tasks]
        target = BrushTarget.from_config(label_config)
        label = target.check_label(setup.label)
        params = {**self.settings.everything, **setup.everything}
        results = []
        for task in tasks:
            try:
                results.append(self._predict_everything(task, target, label, params, setup, project))
            except (ValueError, ImageError) as error:
                logger.warning("no prediction for task %s: %s", task.get("id"), error)
                results.append({"error": str(error), "task": task.get("id")})
        return results

    def fit(self, event: str, data: dict) -> dict:
        """Label Studio's training hook (annotation events, "Start Training"). The SAM models are
        trained offline (``unisam.train``); a submitted or updated annotation's brush regions become
        the project's examples for ``auto_label="examples"`` (a deleted one's are dropped). Returns
        ``{"trained": False, "examples": n, "model_version"}``."""
        project = data.get("project") if isinstance(data.get("project"), dict) else {}
        pid = _project_id(project.get("id"))
        task = data.get("task") if isinstance(data.get("task"), dict) else None
        annotation = data.get("annotation") if isinstance(data.get("annotation"), dict) else None
        if task is not None and annotation is not None and event != "START_TRAINING":
            with self._lock:
                self._examples.setdefault(pid, {}).pop(task.get("id"), None)
            if event != "ANNOTATION_DELETED" and not annotation.get("was_cancelled"):
                self._add_example(pid, task, annotation, project.get("label_config"))
        with self._lock:
            count = len(self._examples.get(pid, {}))
        logger.info("event %s for project %s: %d annotated tasks as examples", event, pid, count)
        return {"trained": False, "examples": count, "model_version": self.model_version}

    def _add_example(self, pid: str, task: dict, annotation: dict, label_config: str | None) -> None:
        """Keep the annotation's labelled brush regions (with the task's image) as examples."""
        regions = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == "brushlabels"]
        named = [(r, (r.get("value") or {}).get("brushlabels") or []) for r in regions]
        named = [(r, labels[0]) for r, labels in named if labels]
        if not named or not label_config:
            return
        try:
            target = BrushTarget.from_config(label_config)
            image = self._image(task, target.data_key, self._setup_of(pid))
            masks = np.stack([brush_mask(r) for r, _ in named])
            if masks.shape[1:] != image.shape[:2]:
                raise ValueError(f"regions of {masks.shape[1:]} on an image of {image.shape[:2]}")
        except (ValueError, ImageError) as error:
            logger.warning("annotation of task %s not kept as an example: %s", task.get("id"), error)
            return
        example = (image, unisam.Instances.from_masks(masks, labels=[label for _, label in named]))
        with self._lock:
            store = self._examples.setdefault(pid, {})
            store[task.get("id")] = example
            while len(store) > EXAMPLE_TASKS:
                store.pop(next(iter(store)))

    def _auto_labels(self, image: np.ndarray, found: unisam.Instances, target: BrushTarget,
                     setup: ProjectSetup, project: str | None) -> list[str | None] | None:
        """Names for ``found``'s masks as the project's setup asks (None: auto-labeling is off)."""
        if setup.auto_label == "off" or not len(found):
            return None
        if setup.auto_label == "text":
            model = setup.label_model or self.settings.label_model
            return unisam.label(image, found, list(target.labels), model=model, unknown=setup.unknown).labels
        with self._lock:
            examples = list(self._examples.get(_project_id(project), {}).values())
        if not examples:
            logger.info("auto_label=examples: no submitted annotations yet; regions keep the default label")
            return None
        return unisam.label(image, found, examples=examples, segment_model=self.predictor,
                            unknown=setup.unknown).labels

    # ------------------------------------------------------------------ internals
    def _setup_of(self, project: str | None) -> ProjectSetup:
        with self._lock:
            return self._projects.get(_project_id(project), ProjectSetup())

    def _task_url(self, task: dict, data_key: str, tag: str) -> str:
        data = task.get("data")
        if not isinstance(data, dict) or data_key not in data:
            raise ValueError(f"task {task.get('id')} has no {data_key!r} in its data (the <{tag}> value ${data_key})")
        return data[data_key]

    def _image(self, task: dict, data_key: str, setup: ProjectSetup) -> np.ndarray:
        return self.images.load(
            self._task_url(task, data_key, "Image"),
            hostname=self.settings.label_studio_url or setup.hostname,
            token=self.settings.api_key or setup.access_token,
            task_id=task.get("id"),
        )

    def _predict_clicks(
        self, task: dict, context: dict, label_config: str, setup: ProjectSetup, project: str | None
    ) -> dict:
        clicks = parse_context(context)
        target = BrushTarget.from_config(label_config, clicks.to_name)
        label = target.check_label(clicks.label)
        image = self._image(task, target.data_key, setup)
        points, point_labels, box = clicks.in_pixels(width=image.shape[1], height=image.shape[0])
        prompt = unisam.Prompt(points=points, point_labels=point_labels, box=box, label=label)
        found = unisam.segment(image, prompt, model=self.predictor)
        if setup.auto_label_clicks:
            label = ((self._auto_labels(image, found, target, setup, project) or [None])[0]) or label
        score = float(found.scores[0])
        region = brush_region(
            found.masks[0], from_name=target.from_name, to_name=target.to_name, label=label, score=score
        )
        return {"result": [region], "score": score, "model_version": self.model_version}

    def _predict_video(self, task: dict, context: dict, label_config: str, setup: ProjectSetup) -> dict:
        drawn = parse_video_context(context)
        target = VideoTarget.from_config(label_config, drawn.to_name)
        label = target.check_label(drawn.label)
        url = self._task_url(task, target.data_key, "Video")
        with tempfile.TemporaryDirectory(prefix="unisam-ls-video-") as tmp:
            path = self.images.fetch(
                url,
                tmp,
                hostname=self.settings.label_studio_url or setup.hostname,
                token=self.settings.api_key or setup.access_token,
                task_id=task.get("id"),
                what="video",
            )
            try:
                video = unisam.open_frames(path)
            except (ValueError, OSError) as error:
                raise ImageError(f"cannot read video {url!r} of task {task.get('id')}: {error}") from None
            with video:
                items, score = self._track_box(video, drawn)
        region = video_box_region(
            drawn, items, from_name=target.from_name, to_name=target.to_name, label=label, score=score
        )
        return {"result": [region], "score": score, "model_version": self.model_version}

    def _track_box(self, video: unisam.Frames, drawn: VideoBox) -> tuple[list[dict], float]:
        """Sequence items for the frames after ``drawn.frame`` where unisam follows the drawn box (the
        last one ``enabled: false`` where it is lost), and the mean score of the tracked masks."""
        if drawn.frame >= len(video):
            raise ValueError(f"the box is on frame {drawn.frame + 1}, but the video has {len(video)} frames")
        height, width = video.size
        start = drawn.frame
        count = min(len(video) - start, self.settings.video_track_frames + 1)
        window = unisam.Frames(count, lambda i: video[start + i], f"frames {start + 1}-{start + count} of {video.name}")
        prompt = unisam.Prompt(box=drawn.in_pixels(width, height))
        began = time.perf_counter()
        logger.info("tracking a box from frame %d over %d frames of %s", start + 1, count - 1, video.name)
        tracks = unisam.track(window, {1: prompt}, model=self.predictor)
        logger.info("tracked in %.1f s", time.perf_counter() - began)
        items, scores, last = [], [], None
        for offset, found in enumerate(tracks[1:], 1):
            frame = start + offset
            where = np.flatnonzero(found.ids == 1) if found.ids is not None else []
            if not len(where):
                box = last if last is not None else prompt.box  # lost at once: where it was drawn
                items.append(video_box_item(box, frame, width, height, seconds=drawn.seconds(frame), enabled=False))
                break
            last = found.boxes[where[0]]
            scores.append(float(found.scores[where[0]]))
            items.append(video_box_item(last, frame, width, height, seconds=drawn.seconds(frame)))
        return items, float(np.mean(scores)) if scores else 0.0

    def _predict_everything(
        self, task: dict, target: BrushTarget, label: str, params: dict, setup: ProjectSetup, project: str | None
    ) -> dict:
        image = self._image(task, target.data_key, setup)
        found = unisam.segment_everything(image, model=self.predictor, **params)
        names = self._auto_labels(image, found, target, setup, project) or [None] * len(found)
        regions = [
            brush_region(mask, from_name=target.from_name, to_name=target.to_name, label=name or label, score=score)
            for mask, score, name in zip(found.masks, found.scores.tolist(), names, strict=True)
        ]
        score = float(np.mean(found.scores)) if len(found) else 0.0
        return {"result": regions, "score": score, "model_version": self.model_version}


def _has_video_box(context: dict) -> bool:
    results = context.get("result") if isinstance(context, dict) else None
    return isinstance(results, list) and any(isinstance(r, dict) and r.get("type") == VIDEO_BOX_TYPE for r in results)


def _project_id(project: str | None) -> str:
    """Label Studio's project uid ``"<id>.<created timestamp>"`` -> ``"<id>"``."""
    return str(project).split(".", 1)[0] if project is not None else ""
