"""``label``: names for masks, from a vocabulary (open-vocabulary, CLIP) or from labelled examples.

Text mode (Open-Vocabulary SAM's question: *what* did SAM segment?): each class is embedded with
CLIP's text tower (prompt templates and synonyms averaged, cached), each mask by CLIP's image tower,
and a mask's class probabilities are ``softmax(logit_scale * cosine)`` over the vocabulary. Modes:

``"crop"``      each mask's context crop (box enlarged, outside dimmed) through the image encoder;
``"dense"``     one pass over the image, features averaged inside each mask (OVSAM's "feature crop";
                far cheaper with many masks);
``"ensemble"``  the geometric mean of both probabilities (as FC-CLIP / OVSAM ensemble their two
                classifiers), renormalised. The default.

By example (no CLIP needed): ``examples`` are ``(image, Instances)`` pairs whose ``labels`` are set; a
class prototype is the normalised mean of its examples' features (the SAM image embedding averaged
inside each mask, or CLIP's dense features when a CLIP ``model`` is given), and a mask's
probabilities are ``softmax(cosine / EXAMPLE_TEMPERATURE)`` over the prototypes.

A mask whose best probability is below ``unknown`` keeps the label None (its score is still set);
an empty mask gets None and 0.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .api import segment_everything
from .hub import LabelModelArg, ModelArg, get_label_model, get_model
from .images import load_image
from .instances import Instances
from .runtime.clip import ClipModel
from .runtime.linking import pool_features
from .runtime.pooling import normalise

logger = logging.getLogger(__name__)

MODES = ("crop", "dense", "ensemble")
# CLIP prompt ensembling (Radford et al. 2021): a few generic photo templates; "{}" is the class name.
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a bright photo of a {}.",
)
EXAMPLE_TEMPERATURE = 0.05  # cosine similarities to prototypes are divided by this before the softmax
MAX_NAME_CHARS = 300  # longer class names are refused (CLIP reads at most 77 tokens of text anyway)


@dataclass(frozen=True)
class Vocabulary:
    """Class names, each with its synonyms (``names[i]`` is ``synonyms[i][0]``)."""

    synonyms: tuple[tuple[str, ...], ...]

    @property
    def names(self) -> list[str]:
        return [s[0] for s in self.synonyms]

    def __len__(self) -> int:
        return len(self.synonyms)

    @classmethod
    def parse(cls, vocabulary: Vocabulary | str | Path | Sequence[str] | Mapping[str, Sequence[str]]) -> Vocabulary:
        """A vocabulary from a list of names (``"tv, television"``: a class with a synonym), a mapping
        ``{name: [synonyms]}``, or a text file with one class per line (``#`` starts a comment).
        Raises ``ValueError`` for no classes, an empty or over-long name, or a class named twice
        (case-insensitive)."""
        if isinstance(vocabulary, Vocabulary):
            return vocabulary
        if isinstance(vocabulary, Path) or (isinstance(vocabulary, str) and Path(vocabulary).is_file()):
            try:
                text = Path(vocabulary).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read the vocabulary file {vocabulary}: {exc}") from None
            return cls.from_text(text)
        if isinstance(vocabulary, str):
            raise ValueError(
                f"vocabulary {vocabulary!r} is a string: give a list of class names, the path of an "
                "existing text file with one class per line, or Vocabulary.from_text(text)"
            )
        if isinstance(vocabulary, Mapping):
            entries = [[name, *synonyms] for name, synonyms in vocabulary.items()]
        else:
            entries = [str(name).split(",") for name in vocabulary]
        return cls._build(entries)

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        """One class per line, synonyms after commas (``tv, television``), ``#`` starts a comment: the
        format of vocabulary files and of the hosts' vocabulary boxes."""
        lines = (line.split("#", 1)[0] for line in text.splitlines())
        return cls._build([line.split(",") for line in lines if line.strip()])

    @classmethod
    def _build(cls, entries: Iterable[Sequence[str]]) -> Vocabulary:
        classes = []
        for entry in entries:
            words = tuple(dict.fromkeys(" ".join(str(w).split()) for w in entry if str(w).strip()))
            if not words:
                raise ValueError(f"vocabulary entry {entry!r} has no name")
            long = [w for w in words if len(w) > MAX_NAME_CHARS]
            if long:
                raise ValueError(f"class name of {len(long[0])} characters (at most {MAX_NAME_CHARS}): {long[0][:40]!r}...")
            classes.append(words)
        if not classes:
            raise ValueError("the vocabulary is empty: give at least one class name")
        seen: dict[str, str] = {}
        for words in classes:
            key = words[0].casefold()
            if key in seen:
                raise ValueError(f"class {words[0]!r} is in the vocabulary twice (as {seen[key]!r})")
            seen[key] = words[0]
        return cls(tuple(classes))


def label(
    image: Any,
    instances: Instances,
    vocabulary: Vocabulary | str | Path | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    *,
    model: LabelModelArg = None,
    examples: Sequence[tuple[Any, Instances]] | None = None,
    mode: str = "ensemble",
    templates: Sequence[str] = TEMPLATES,
    top_k: int = 5,
    unknown: float = 0.0,
    segment_model: ModelArg = None,
) -> Instances:
    """``instances`` of ``image`` with ``labels``, ``label_scores`` (the probability of the label) and
    ``label_topk`` (the ``top_k`` best ``(name, probability)`` per mask) filled.

    Give a ``vocabulary`` (see :meth:`Vocabulary.parse`; then ``model`` is the CLIP label model: a
    :class:`ClipModel`, ``"arch/pretrained"``, an export directory, or None for the cached default)
    or ``examples`` (``(image, Instances)`` pairs with labels; features from ``segment_model``'s SAM
    embedding, or from CLIP's dense features when ``model`` is given). ``mode`` as in the module
    docstring (text mode only). ``unknown``: below this probability the label stays None.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if (vocabulary is None) == (examples is None):
        raise ValueError("give a vocabulary (class names) or examples (labelled instances), exactly one of them")
    if not isinstance(instances, Instances):
        raise TypeError(f"instances must be unisam.Instances, got {type(instances).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    array = load_image(image)
    if instances.image_size != array.shape[:2]:
        raise ValueError(f"instances are for a {instances.image_size} image, the image is {array.shape[:2]}")
    if examples is not None:
        names, probs = _by_example(array, instances, examples, model, segment_model)
    else:
        vocab = Vocabulary.parse(vocabulary)
        names, probs = vocab.names, _text_probabilities(array, instances, vocab, get_label_model(model), mode, templates)
    return _with_labels(instances, names, probs, top_k, unknown)


def segment_and_label(
    image: Any,
    vocabulary: Vocabulary | str | Path | Sequence[str] | Mapping[str, Sequence[str]],
    *,
    model: ModelArg = None,
    label_model: LabelModelArg = None,
    mode: str = "ensemble",
    unknown: float = 0.0,
    **everything: Any,
) -> Instances:
    """Segment everything in ``image`` (``model``, options as :func:`unisam.segment_everything`), then
    name each mask from ``vocabulary`` with ``label_model`` (see :func:`label`)."""
    vocab = Vocabulary.parse(vocabulary)  # a bad vocabulary fails before the image is segmented
    array = load_image(image)
    found = segment_everything(array, model=model, **everything)
    return label(array, found, vocab, model=label_model, mode=mode, unknown=unknown)


def _text_probabilities(
    image: np.ndarray, instances: Instances, vocab: Vocabulary, clip: ClipModel, mode: str, templates: Sequence[str]
) -> np.ndarray:
    """``(N, K)`` class probabilities of each mask in ``mode``."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every prompt template must hold '{}' for the class name")
    text = clip.class_embeddings(vocab.synonyms, templates)  # (K, D)
    if not len(instances):
        return np.zeros((0, len(vocab)), np.float32)
    probs = []
    if mode in ("crop", "ensemble"):
        probs.append(_softmax(clip.logit_scale * clip.encode_masks(image, instances.masks) @ text.T))
    if mode in ("dense", "ensemble"):
        probs.append(_softmax(clip.logit_scale * clip.pool_masks(clip.dense(image), instances.masks) @ text.T))
    if len(probs) == 1:
        return probs[0]
    mixed = np.sqrt(probs[0] * probs[1])
    return mixed / np.maximum(mixed.sum(axis=1, keepdims=True), 1e-30)


def _by_example(
    image: np.ndarray,
    instances: Instances,
    examples: Sequence[tuple[Any, Instances]],
    model: LabelModelArg,
    segment_model: ModelArg,
) -> tuple[list[str], np.ndarray]:
    """Class names (in first-seen order) and ``(N, K)`` nearest-prototype probabilities."""
    if model is not None:
        clip = get_label_model(model)

        def features(array: np.ndarray, masks: np.ndarray) -> np.ndarray:
            return clip.pool_masks(clip.dense(array), masks)
    else:
        predictor = get_model(segment_model)

        def features(array: np.ndarray, masks: np.ndarray) -> np.ndarray:
            # not centred on the image's mean: across images, what an object shares with its
            # surroundings is evidence of its kind (5 examples per class on synthetic mosaics: 62% vs 53%)
            return pool_features(predictor.embed(array), masks, centre=False)

    sums: dict[str, np.ndarray] = {}
    for k, pair in enumerate(examples):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], Instances)):
            raise ValueError(f"examples[{k}] must be an (image, Instances) pair")
        ex_image, ex = load_image(pair[0]), pair[1]
        if ex.labels is None or ex.image_size != ex_image.shape[:2]:
            raise ValueError(f"examples[{k}]: its Instances need labels and the size of its image")
        keep = [i for i, name in enumerate(ex.labels) if name is not None and ex.masks[i].any()]
        if not keep:
            continue
        vectors = features(ex_image, ex.masks[keep])
        for i, vector in zip(keep, vectors):
            sums[ex.labels[i]] = sums.get(ex.labels[i], 0) + vector
    if not sums:
        raise ValueError("the examples hold no labelled, non-empty mask")
    names = list(sums)
    prototypes = normalise(np.stack([sums[n] for n in names]))
    if not len(instances):
        return names, np.zeros((0, len(names)), np.float32)
    similarity = features(image, instances.masks) @ prototypes.T
    return names, _softmax(similarity / EXAMPLE_TEMPERATURE)


def _with_labels(instances: Instances, names: list[str], probs: np.ndarray, top_k: int, unknown: float) -> Instances:
    empty = ~instances.masks.any(axis=(1, 2))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    labels: list[str | None] = []
    scores = np.zeros(len(instances), np.float32)
    topk = []
    for i, ranked in enumerate(order):
        if empty[i]:
            labels.append(None)
            topk.append([])
            continue
        best = ranked[0]
        scores[i] = probs[i, best]
        labels.append(names[best] if probs[i, best] >= unknown else None)
        topk.append([(names[j], float(probs[i, j])) for j in ranked])
    return dataclasses.replace(instances, labels=labels, label_scores=scores, label_topk=topk)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
