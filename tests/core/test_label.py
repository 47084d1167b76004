"""unisam.label: vocabularies, scoring modes, caching, labeling by example, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import unisam
from unisam.data.synthetic import generate_kind_mosaic
from unisam.label import Vocabulary
from unisam.runtime.clip import ClipModel


@pytest.fixture(scope="module")
def clip(clip_reference, tmp_path_factory) -> ClipModel:
    """The random convnext_tiny open_clip model as unisam exported it (labels are arbitrary but fixed)."""
    (directory,) = (clip_reference / "cache" / "onnx-clip").glob("convnext_tiny-*")
    return ClipModel(directory, text_cache=tmp_path_factory.mktemp("text-cache"))


@pytest.fixture(scope="module")
def scene():
    image, masks, kinds = generate_kind_mosaic(np.random.default_rng(7))
    return image, unisam.Instances.from_masks(masks[::6]), [k for k in kinds[::6]]


VOCAB = ["nucleus", "cell, cytoplasm", "debris", "Zürich 🐱 tram"]


def count_text_encoding(clip, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = ClipModel.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda texts: calls.append(len(texts)) or original(clip, texts))
    return calls


def test_vocabulary_from_a_list_a_mapping_and_a_file(tmp_path):
    assert Vocabulary.parse(["tv, television", " cat "]).synonyms == (("tv", "television"), ("cat",))
    assert Vocabulary.parse({"tv": ["television"]}).names == ["tv"]
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\ntv, television\n\ncat  # a comment\n", encoding="utf-8")
    assert Vocabulary.parse(path).synonyms == (("tv", "television"), ("cat",))
    assert Vocabulary.parse(str(path)).names == ["tv", "cat"]


@pytest.mark.parametrize(
    ("vocabulary", "message"),
    [([], "empty"), (["cat", "Cat"], "twice"), (["x" * 301], "at most 300"), (["cat", " , "], "no name"),
     ("cat", "is a string")],
)
def test_bad_vocabularies_are_refused_clearly(vocabulary, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary.parse(vocabulary)


@pytest.mark.parametrize("mode", ["crop", "dense", "ensemble"])
def test_each_mode_names_every_mask_from_the_vocabulary(clip, scene, mode):
    image, instances, _ = scene
    out = unisam.label(image, instances, VOCAB, model=clip, mode=mode, top_k=3)
    assert len(out) == len(instances) and out.labels is not None
    assert set(out.labels) <= {"nucleus", "cell", "debris", "Zürich 🐱 tram"}
    assert out.label_scores.shape == (len(instances),) and ((out.label_scores > 0) & (out.label_scores <= 1)).all()
    for name, score, ranked in zip(out.labels, out.label_scores, out.label_topk):
        assert len(ranked) == 3 and ranked[0] == (name, pytest.approx(float(score)))
        assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    np.testing.assert_array_equal(out.masks, instances.masks)  # the masks themselves are untouched
    assert instances.labels is None  # and the input is not modified


def test_ensemble_is_the_geometric_mean_of_crop_and_dense(clip, scene):
    image, instances, _ = scene
    full = {m: unisam.label(image, instances, VOCAB, model=clip, mode=m, top_k=4) for m in ("crop", "dense", "ensemble")}

    def probs(result):
        return np.array([[dict(r)[n] for n in ["nucleus", "cell", "debris", "Zürich 🐱 tram"]] for r in result.label_topk])

    mixed = np.sqrt(probs(full["crop"]) * probs(full["dense"]))
    np.testing.assert_allclose(probs(full["ensemble"]), mixed / mixed.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_dense_mode_scores_the_dense_mask_embeddings(clip, scene):
    image, instances, _ = scene
    out = unisam.label(image, instances, VOCAB, model=clip, mode="dense", templates=["{}"])
    text = clip.encode_text(["nucleus", "cell", "cytoplasm", "debris", "Zürich 🐱 tram"])
    classes = np.stack([text[0], (text[1] + text[2]) / np.linalg.norm(text[1] + text[2]), text[3], text[4]])
    best = (clip.pool_masks(clip.dense(image), instances.masks) @ classes.T).argmax(axis=1)
    assert out.labels == [["nucleus", "cell", "debris", "Zürich 🐱 tram"][i] for i in best]


def test_a_repeated_vocabulary_encodes_no_text(clip, scene, monkeypatch, tmp_path):
    image, instances, _ = scene
    calls = count_text_encoding(clip, monkeypatch)
    vocab = ["a class seen once", "another new one"]
    unisam.label(image, instances, vocab, model=clip, mode="dense")
    assert calls == [2 * len(unisam.LABEL_TEMPLATES)]  # one batch for the new classes
    unisam.label(image, instances, vocab, model=clip, mode="dense")
    unisam.label(image, instances, vocab[::-1], model=clip, mode="dense")
    assert len(calls) == 1
    # on disk: a new process (a new ClipModel on the same cache folder) encodes nothing either
    again = ClipModel(clip.directory, text_cache=clip.text_cache)
    fresh = count_text_encoding(again, monkeypatch)
    unisam.label(image, instances, vocab, model=again, mode="dense")
    assert fresh == []


def test_unknown_threshold_zero_masks_and_empty_masks(clip, scene):
    image, instances, _ = scene
    assert unisam.label(image, instances, VOCAB, model=clip, unknown=1.01).labels == [None] * len(instances)
    none = unisam.label(image, unisam.Instances.empty(*image.shape[:2]), VOCAB, model=clip)
    assert len(none) == 0 and none.labels == []
    masks = instances.masks[:2].copy()
    masks[1] = False  # e.g. a mask that lay outside the image and was clipped away
    out = unisam.label(image, unisam.Instances.from_masks(masks), VOCAB, model=clip)
    assert out.labels[0] is not None and out.labels[1] is None and out.label_scores[1] == 0


def test_label_rejects_inconsistent_calls(clip, scene):
    image, instances, _ = scene
    with pytest.raises(ValueError, match="exactly one"):
        unisam.label(image, instances, model=clip)
    with pytest.raises(ValueError, match="exactly one"):
        unisam.label(image, instances, VOCAB, model=clip, examples=[(image, instances)])
    with pytest.raises(ValueError, match="mode must be one of"):
        unisam.label(image, instances, VOCAB, model=clip, mode="fast")
    with pytest.raises(ValueError, match="image is"):
        unisam.label(image[:100], instances, VOCAB, model=clip)
    with pytest.raises(ValueError, match="'{}'"):
        unisam.label(image, instances, VOCAB, model=clip, templates=["a photo"])
    with pytest.raises(ValueError, match="need labels"):
        unisam.label(image, instances, examples=[(image, instances)])


def kind_examples(rng, per_class: int = 5):
    """(image, Instances) pairs holding the first ``per_class`` objects of each kind."""
    examples, count = [], {}
    while len(count) < 4 or min(count.values()) < per_class:
        image, masks, kinds = generate_kind_mosaic(rng)
        keep = [i for i, k in enumerate(kinds) if count.get(k, 0) < per_class]
        for i in keep:
            count[kinds[i]] = count.get(kinds[i], 0) + 1
        examples.append((image, unisam.Instances.from_masks(masks[keep], labels=[kinds[i] for i in keep])))
    return examples


def test_by_example_names_most_objects_from_five_examples_per_class():
    """SAM embeddings only (the bundled model, no CLIP): four kinds of objects, chance is 25%.
    benchmarks/label_by_example.py measured 62% on these scenes; the assertion leaves a margin."""
    rng = np.random.default_rng(0)
    examples = kind_examples(rng)
    correct = total = 0
    for _ in range(6):
        image, masks, kinds = generate_kind_mosaic(rng)
        out = unisam.label(image, unisam.Instances.from_masks(masks), examples=examples)
        correct += sum(a == b for a, b in zip(out.labels, kinds))
        total += len(kinds)
    assert correct / total >= 0.5


def test_by_example_with_clip_features(clip, scene):
    rng = np.random.default_rng(3)
    examples = kind_examples(rng, per_class=2)
    image, instances, _ = scene
    out = unisam.label(image, instances, examples=examples, model=clip)
    assert set(out.labels) <= {"shapes", "nuclei", "cells", "brightfield"} and len(out) == len(instances)
