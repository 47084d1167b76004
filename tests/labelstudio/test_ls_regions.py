"""Label Studio <-> unisam conversions without a model: percent coordinates, smart-tool contexts, brush
RLE (decoded with the Label Studio SDK), labeling-config parsing and settings."""

from __future__ import annotations

import numpy as np
import pytest
from ls_helpers import decode_brush, keypoint, readme_config, rectangle

from unisam_labelstudio.backend import BrushTarget, Settings, check_everything_params
from unisam_labelstudio.regions import brush_region, parse_context

SIZE = (400, 300)  # width, height: not square, so swapped axes would show


def test_keypoints_and_last_box_to_pixels():
    regions = [
        keypoint(100, 30, SIZE),
        rectangle((10, 20, 30, 40), SIZE),  # replaced by the later box
        keypoint(250, 290, SIZE, positive=False, label="Cell"),
        rectangle((200, 150, 400, 300), SIZE, label="Cell"),
        {"type": "brushlabels", "value": {"rle": [1, 2]}},  # other region types are ignored
    ]
    clicks = parse_context({"result": regions})
    points, labels, box = clicks.in_pixels(*SIZE)
    np.testing.assert_allclose(points, [[100, 30], [250, 290]], atol=1e-9)
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_allclose(box, [200, 150, 400, 300], atol=1e-9)
    assert (clicks.label, clicks.to_name, clicks.original_size) == ("Cell", "image", SIZE)


def test_is_positive_missing_means_a_positive_click():
    region = keypoint(10, 10, SIZE)
    del region["is_positive"]
    assert parse_context({"result": [region]}).point_labels.tolist() == [1]


def test_rotated_rectangle_becomes_the_bounding_box_of_its_corners():
    region = rectangle((100, 50, 200, 150), SIZE)  # 100 x 100 pixels, top-left (100, 50)
    region["value"]["rotation"] = 90  # clockwise about the top-left corner: extends to the left
    _, _, box = parse_context({"result": [region]}).in_pixels(*SIZE)
    np.testing.assert_allclose(box, [0, 50, 100, 150], atol=1e-9)
    region["value"]["rotation"] = 45
    _, _, box = parse_context({"result": [region]}).in_pixels(*SIZE)
    half_diagonal = 100 / np.sqrt(2)
    np.testing.assert_allclose(box, [100 - half_diagonal, 50, 100 + half_diagonal, 50 + 2 * half_diagonal], atol=1e-9)


@pytest.mark.parametrize(
    "context, message",
    [
        (None, "'result' list"),
        ({"result": "x"}, "'result' list"),
        ({"result": []}, "no keypoint and no rectangle"),
        ({"result": [{"type": "brushlabels", "value": {}}]}, "no keypoint and no rectangle"),
        ({"result": [{"type": "keypointlabels", "value": {"x": 101, "y": 5}}]}, "value.x = 101 is outside 0-100"),
        ({"result": [{"type": "keypointlabels", "value": {"x": 5, "y": -0.5}}]}, "value.y = -0.5 is outside 0-100"),
        ({"result": [{"type": "keypointlabels", "value": {"x": "5", "y": 5}}]}, "must be a number"),
        ({"result": [{"type": "keypointlabels", "value": {"x": float("nan"), "y": 5}}]}, "must be a number"),
        ({"result": [{"type": "keypointlabels"}]}, "no 'value' object"),
        ({"result": [{"type": "rectanglelabels", "value": {"x": 5, "y": 5, "width": 0, "height": 3}}]}, "zero width"),
        (
            {"result": [{"type": "rectanglelabels", "value": {"x": 5, "y": 5, "width": 130, "height": 3}}]},
            "outside 0-100",
        ),
    ],
)
def test_bad_contexts_are_rejected_with_a_clear_message(context, message):
    with pytest.raises(ValueError, match=message):
        parse_context(context)


def test_image_size_must_match_what_label_studio_shows():
    clicks = parse_context({"result": [keypoint(10, 10, SIZE)]})
    with pytest.raises(ValueError, match="400x300 pixels but the backend loaded it as 300x400"):
        clicks.in_pixels(300, 400)


def test_brush_region_rle_decodes_to_the_mask():
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 53), bool)
    mask[5:20, 10:40] = True
    mask[rng.random(mask.shape) < 0.05] = True  # isolated pixels: runs of length 1
    region = brush_region(mask, from_name="brush", to_name="image", label="Cell", score=0.75)
    assert (region["original_width"], region["original_height"]) == (53, 37)
    assert region["value"]["brushlabels"] == ["Cell"] and region["score"] == 0.75
    np.testing.assert_array_equal(decode_brush(region), mask)
    assert not decode_brush(brush_region(np.zeros((4, 6), bool), from_name="b", to_name="i", label="x", score=0)).any()


def test_brush_target_from_the_readme_config():
    target = BrushTarget.from_config(readme_config())
    assert (target.from_name, target.to_name, target.data_key) == ("brush", "image", "image")
    assert target.labels == ("Nucleus", "Cell")
    assert target.check_label(None) == "Nucleus" and target.check_label("Cell") == "Cell"
    with pytest.raises(ValueError, match="'Dog' is not a label of <BrushLabels name='brush'>"):
        target.check_label("Dog")
    with pytest.raises(ValueError, match="no <BrushLabels> control for the <Image name='other'>"):
        BrushTarget.from_config(readme_config(), to_name="other")


@pytest.mark.parametrize(
    "config, message",
    [
        ('<View><Image name="image" value="$image"/></View>', "no <BrushLabels> control"),
        (
            '<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i"><Label value="A"/>'
            "</RectangleLabels></View>",
            "no <BrushLabels> control",
        ),
        ("<View><Image", "cannot parse the labeling config"),
        ("", "no label_config"),
        (None, "no label_config"),
    ],
)
def test_unusable_label_configs(config, message):
    with pytest.raises(ValueError, match=message):
        BrushTarget.from_config(config)


def test_settings_from_environment():
    env = {
        "UNISAM_MODEL": "unisam-tiny",
        "LABEL_STUDIO_HOST": "http://ls:8080",
        "LABEL_STUDIO_ACCESS_TOKEN": "abc",
        "UNISAM_EVERYTHING_PARAMS": '{"points_per_side": 8}',
        "BASIC_AUTH_USER": "u",
        "BASIC_AUTH_PASS": "p",
        "UNISAM_IMAGE_CACHE_MB": "64",
    }
    settings = Settings.from_env(env)
    assert settings == Settings("unisam-tiny", "http://ls:8080", "abc", {"points_per_side": 8}, ("u", "p"), 64)
    env.update(LABEL_STUDIO_URL="http://primary:8080", LABEL_STUDIO_API_KEY="key", BASIC_AUTH_PASS="")
    settings = Settings.from_env(env)
    assert (settings.label_studio_url, settings.api_key, settings.basic_auth) == ("http://primary:8080", "key", None)
    with pytest.raises(ValueError, match="not valid JSON"):
        Settings.from_env({"UNISAM_EVERYTHING_PARAMS": "{points"})
    with pytest.raises(ValueError, match=r"unknown segment-everything options \['points'\]"):
        check_everything_params({"points": 3}, "extra params")
