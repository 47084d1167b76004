"""The "label masks" operator and labeling in "segment everything", in a real FiftyOne.

Oracle: ``unisam.label`` called here on the same image files with the ground-truth masks."""

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from PIL import Image

import unisam
from unisam.data.synthetic import generate_kind_mosaic

LABEL = "@unisam/unisam/label_masks"
EVERYTHING = "@unisam/unisam/segment_everything"


def detections(masks, labels=None):
    """Ground-truth masks as FiftyOne stores them (cropped to their boxes), with a mask confidence."""
    found = unisam.Instances.from_masks(np.asarray(masks), np.full(len(masks), 0.9, np.float32), labels=labels)
    dets = []
    for i, crop in enumerate(found.crop_masks_to_boxes()):
        x1, y1, x2, y2 = found.boxes[i].tolist()
        h, w = found.image_size
        dets.append(fo.Detection(label=None if labels is None else labels[i], mask=crop, confidence=0.9,
                                 bounding_box=[x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h]))
    return fo.Detections(detections=dets)


@pytest.fixture
def mosaics(tmp_path):
    """Two tagged example samples with labelled masks, and two targets whose masks have no labels."""
    rng = np.random.default_rng(11)
    ds, truth = fo.Dataset(), {}
    for i in range(4):
        image, masks, kinds = generate_kind_mosaic(rng, (256, 256))  # relative boxes k / 256 are exact
        path = str(tmp_path / f"mosaic{i}.png")
        Image.fromarray(image).save(path)
        example = i < 2
        sample = fo.Sample(filepath=path, masks=detections(masks, kinds if example else None),
                           tags=["examples"] if example else [])
        ds.add_sample(sample)
        truth[path] = (masks, kinds)
    yield ds, truth
    ds.delete()


def test_label_masks_by_example_gives_the_cores_labels(mosaics):
    ds, truth = mosaics
    targets = ds.match_tags("examples", bool=False)
    summary = foo.get_operator(LABEL)(targets, label_field="masks", examples_tag="examples")
    assert (summary["samples"], summary["segmented"], summary["failed"]) == (2, 2, {})
    examples = [(s.filepath, unisam.Instances.from_masks(truth[s.filepath][0], labels=truth[s.filepath][1]))
                for s in ds.match_tags("examples")]
    correct = total = 0
    for sample in targets:
        masks, kinds = truth[sample.filepath]
        expected = unisam.label(sample.filepath, unisam.Instances.from_masks(masks), examples=examples)
        got = sample.masks.detections
        assert [d.label for d in got] == expected.labels
        np.testing.assert_allclose([d.confidence for d in got], expected.label_scores, rtol=1e-5)
        assert all(d.mask_confidence == pytest.approx(0.9) for d in got)  # the mask's own score is kept
        assert got[0].label_alternatives[0] == got[0].label and len(got[0].label_alternative_scores) == 4
        correct += sum(d.label == k for d, k in zip(got, kinds))
        total += len(kinds)
    assert correct / total > 0.35  # four kinds: chance is 0.25
    # the examples themselves were not in the target view: their labels are untouched
    for sample in ds.match_tags("examples"):
        assert [d.label for d in sample.masks.detections] == truth[sample.filepath][1]
    assert ds.get_field("masks").info["unisam_label"]["operator"] == LABEL


def test_existing_labels_are_kept_unless_overwrite(mosaics, clip_export):
    ds, truth = mosaics
    kept = foo.get_operator(LABEL)(ds, label_field="masks", vocabulary=["shapes", "nuclei"], label_model=str(clip_export))
    assert kept["failed"] == {}
    for sample in ds.match_tags("examples"):
        assert [d.label for d in sample.masks.detections] == truth[sample.filepath][1]
    for sample in ds.match_tags("examples", bool=False):
        assert {d.label for d in sample.masks.detections} <= {"shapes", "nuclei"}
    foo.get_operator(LABEL)(ds, label_field="masks", vocabulary="cell\nnucleus, nuclei", label_model=str(clip_export),
                            overwrite=True, mode="dense")
    assert set(ds.values("masks.detections.label", unwind=True)) <= {"cell", "nucleus"}


def test_dataset_classes_and_bad_input_are_reported(mosaics, clip_export):
    ds, _ = mosaics
    with pytest.raises(Exception, match="no classes for this field"):
        foo.get_operator(LABEL)(ds, label_field="masks", source="dataset", label_model=str(clip_export))
    ds.default_classes = ["shapes", "cells"]
    summary = foo.get_operator(LABEL)(ds, label_field="masks", source="dataset", label_model=str(clip_export),
                                      overwrite=True, mode="crop")
    assert summary["segmented"] == 4
    assert set(ds.values("masks.detections.label", unwind=True)) <= {"shapes", "cells"}
    for vocabulary, message in (("cat\nCat", "twice"), ("  \n# only a comment", "empty")):
        with pytest.raises(Exception, match=message):
            foo.get_operator(LABEL)(ds, label_field="masks", vocabulary=vocabulary, label_model=str(clip_export))
    with pytest.raises(Exception, match="choose the Detections field"):
        foo.get_operator(LABEL)(ds, label_field="nope", vocabulary="cat")
    with pytest.raises(Exception, match="no sample has the tag"):
        foo.get_operator(LABEL)(ds, label_field="masks", examples_tag="missing")


def test_segment_everything_can_label_in_the_same_run(mosaics, clip_export):
    ds, _ = mosaics
    view = ds.limit(1)
    summary = foo.get_operator(EVERYTHING)(view, label_field="auto", vocabulary="shapes\ncells", label_model=str(clip_export),
                                           points_per_side=8)
    assert summary["failed"] == {}
    sample = view.first()
    expected = unisam.segment_and_label(sample.filepath, ["shapes", "cells"], label_model=str(clip_export), points_per_side=8)
    assert [d.label for d in sample.auto.detections] == [n for n, m in zip(expected.labels, expected.masks) if m.any()]
