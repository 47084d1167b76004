"""Prompt: one name per idea (point_labels = click polarity, label = class name), the old spelling
deprecated; validation through segment."""

import numpy as np
import pytest

import unisam
from unisam.prompts import collect_prompts


def test_point_labels_is_the_polarity_and_label_the_class_name():
    p = unisam.Prompt(points=[[5, 6]], point_labels=[0], label="cell")
    assert p.point_labels == [0] and p.label == "cell"
    positional = unisam.Prompt([[5, 6]], [1], [1, 2, 8, 9])
    assert positional.point_labels == [1] and positional.box == [1, 2, 8, 9]
    with pytest.raises(TypeError):
        unisam.Prompt(points=[[5, 6]], polarity=[1])
    with pytest.raises(AttributeError):
        p.label = "other"  # frozen


def test_old_labels_spelling_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="point_labels"):
        old = unisam.Prompt(points=[[5, 6]], labels=[0])
    assert old.point_labels == [0]
    with pytest.raises(ValueError, match="point_labels= only"):
        unisam.Prompt(points=[[5, 6]], labels=[0], point_labels=[1])
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:20, 8:20] = 200
    new = unisam.segment(image, points=[[14, 14], [2, 2]], point_labels=[1, 0])
    with pytest.warns(DeprecationWarning, match="labels= is deprecated"):
        legacy = unisam.segment(image, points=[[14, 14], [2, 2]], labels=[1, 0])
    np.testing.assert_array_equal(legacy.masks, new.masks)


def test_prompts_are_validated_against_the_image():
    size = (40, 50)
    (p,) = collect_prompts(None, [[10, 20]], None, None, image_size=size)
    assert p.point_labels.tolist() == [1.0]  # default: foreground
    with pytest.raises(ValueError, match="outside the image"):
        collect_prompts(unisam.Prompt(points=[[60, 10]]), image_size=size)
    with pytest.raises(ValueError, match="x1 < x2"):
        collect_prompts(unisam.Prompt(box=[30, 10, 20, 30]), image_size=size)
    with pytest.raises(ValueError, match="empty prompt"):
        collect_prompts(unisam.Prompt(), image_size=size)
    with pytest.raises(ValueError, match="no prompts"):
        collect_prompts([], image_size=size)
    with pytest.raises(ValueError, match="unisam.Prompt"):
        collect_prompts([{"points": [[1, 1]]}], image_size=size)
    with pytest.raises(ValueError, match="1 \\(foreground\\) or 0"):
        collect_prompts(unisam.Prompt(points=[[1, 1]], point_labels=[2]), image_size=size)
