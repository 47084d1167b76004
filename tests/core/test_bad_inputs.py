"""The bad-input corpus (bad_inputs.py, issue #19): each entry gives one clear one-line error and no crash,
in the core (a ValueError, or FileNotFoundError for a missing file) and in the ``unisam`` command
(one line on stderr, exit status 2, no traceback; in-process for speed, a few as real processes).
Then the inputs that are odd but valid, whose behaviour is defined: RGBA, 16-bit, palette,
EXIF-rotated, a 1 x 1 image, prompts on the edge."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import CORPUS, H, W, good_image
from PIL import Image

import unisam
from unisam.cli import main

BY_NAME = {entry.name: entry for entry in CORPUS}
CORE = [entry for entry in CORPUS if entry.core is not None]
CLI = [entry for entry in CORPUS if entry.cli is not None]


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """A cache with no downloaded weights: the default model is the bundled unisam-tiny."""
    monkeypatch.setenv("UNISAM_CACHE_DIR", str(tmp_path / "cache"))


def test_the_corpus_is_large_and_covers_the_issue():
    assert len(CORPUS) >= 40 and len(BY_NAME) == len(CORPUS)
    assert len(CORE) >= 40 and len(CLI) >= 40
    kinds = ("truncated-png", "truncated-jpeg", "truncated-tiff", "empty-file", "text-named-png", "claims-100000",
             "claims-20000", "nan", "inf", "5d", "outside", "inverted", "vocabulary-empty", "checkpoint-truncated",
             "pickle-runs-code")
    for kind in kinds:
        assert any(kind in name for name in BY_NAME), kind


@pytest.mark.parametrize("entry", CORE, ids=lambda e: e.name)
def test_the_core_refuses_it_with_one_clear_line(entry, tmp_path):
    made = entry.make(tmp_path)
    for call in entry.core(made):
        with pytest.raises(entry.exception, match=entry.error) as info:
            call()
        assert "\n" not in str(info.value), str(info.value)
        assert isinstance(info.value, (ValueError, FileNotFoundError))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("entry", CLI, ids=lambda e: e.name)
def test_the_command_refuses_it_with_one_line_and_status_2(entry, tmp_path, capsys):
    made = entry.make(tmp_path)
    argv = entry.cli(made, tmp_path)
    status, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and out == "", (status, out, err)
    assert len(lines) == 1 and lines[0].startswith("unisam"), err
    assert "error: " in lines[0] and "Traceback" not in err
    assert re.search(entry.error, lines[0]), lines[0]
    assert not (tmp_path / "out.png").exists()  # nothing written for a refused input


@pytest.mark.parametrize(
    "name", ["png-claims-100000x100000", "truncated-jpeg-half", "point-negative-x", "checkpoint-pickle-runs-code",
             "point-not-numbers"]
)
def test_a_real_process_prints_one_line_and_no_traceback(name, tmp_path):
    entry = BY_NAME[name]
    argv = entry.cli(entry.make(tmp_path), tmp_path)
    env = {"UNISAM_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "unisam.cli", *argv], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.search(entry.error, done.stderr), done.stderr


# ------------------------------------------------------------------ odd but valid: defined behaviour


def test_a_negative_list_parses_after_a_space_as_after_an_equals_sign(tmp_path, capsys):
    image = tmp_path / "good.png"
    Image.fromarray(good_image()).save(image)
    spaced = run_cli(["segment", str(image), "--point", "-5,10", "--out", str(tmp_path / "m.png")], capsys)
    joined = run_cli(["segment", str(image), "--point=-5,10", "--out", str(tmp_path / "m.png")], capsys)
    assert spaced == joined and "point (-5, 10) is outside the image" in spaced[2]
    # a point inside still works with a box, negative-looking values only join their option
    status, out, _ = run_cli(["segment", str(image), "--point", "20,20", "--box", "12,10,36,30", "--out",
                              str(tmp_path / "ok.png")], capsys)
    assert status == 0 and (tmp_path / "ok.png").is_file()


def test_prompts_on_the_edge_are_kept_and_half_a_pixel_beyond_it_is_moved_onto_it():
    image = good_image()
    edge = unisam.segment(image, box=[0, 0, W, H], model="unisam-tiny")  # the whole image: allowed
    slack = unisam.segment(image, box=[-0.5, -0.2, W + 0.4, H + 0.5], model="unisam-tiny")
    np.testing.assert_array_equal(edge.masks, slack.masks)
    corner = unisam.segment(image, points=[[W, H]], model="unisam-tiny")
    near = unisam.segment(image, points=[[W + 0.5, H + 0.3]], model="unisam-tiny")
    np.testing.assert_array_equal(corner.masks, near.masks)
    with pytest.raises(ValueError, match="reaches outside"):
        unisam.segment(image, box=[-0.6, 0, W, H], model="unisam-tiny")
    with pytest.raises(ValueError, match="outside the image"):
        unisam.segment(image, points=[[W + 0.6, 1]], model="unisam-tiny")


def _save(tmp_path: Path, name: str, img: Image.Image, **options) -> Path:
    path = tmp_path / name
    img.save(path, **options)
    return path


def test_rgba_palette_gray_and_16_bit_files_have_defined_results(tmp_path):
    rgb = good_image()
    alpha = np.random.default_rng(2).integers(0, 256, (H, W), dtype=np.uint8)
    rgba = _save(tmp_path, "rgba.png", Image.fromarray(np.dstack([rgb, alpha])))
    np.testing.assert_array_equal(unisam.load_image(rgba), rgb)  # alpha dropped, not composited
    palette_img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette = _save(tmp_path, "palette.png", palette_img)
    np.testing.assert_array_equal(unisam.load_image(palette), np.asarray(palette_img.convert("RGB")))
    gray = _save(tmp_path, "gray.png", Image.fromarray(rgb[..., 0]))
    np.testing.assert_array_equal(unisam.load_image(gray), np.repeat(rgb[..., :1], 3, axis=2))
    wide = (rgb[..., 0].astype(np.uint16) * 200 + 1000).astype(np.uint16)
    sixteen = _save(tmp_path, "g16.png", Image.fromarray(wide))
    loaded = unisam.load_image(sixteen)
    assert loaded.dtype == np.uint8 and loaded.min() == 0 and loaded.max() == 255  # stretched, not cut to 8 bits
    np.testing.assert_array_equal(loaded, unisam.load_image(wide))
    for path in (rgba, palette, gray, sixteen):  # and each segments like its RGB version would
        found = unisam.segment(path, box=[12, 10, 36, 30], model="unisam-tiny")
        assert found.masks.shape == (1, H, W) and found.masks[0, 20, 24]


def test_exif_rotated_photo_segments_where_the_user_sees_the_object(tmp_path):
    shown = np.full((40, 60, 3), 20, np.uint8)  # what a viewer displays: 60 wide, 40 tall
    shown[5:20, 35:55] = 230  # a bright block at the top right
    stored = np.rot90(shown, k=1)  # stored rotated; EXIF orientation 6 says "rotate 90 clockwise to display"
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path, "photo.jpg", Image.fromarray(np.ascontiguousarray(stored)), exif=exif, quality=95)
    loaded = unisam.load_image(path)
    assert loaded.shape == shown.shape and np.abs(loaded.astype(int) - shown).mean() < 4
    found = unisam.segment(path, box=[35, 5, 55, 20], model="unisam-tiny")  # the block, in display coordinates
    mask = found.masks[0]
    assert mask.shape == (40, 60) and mask[12, 45] and not mask[30, 10]
    with pytest.raises(ValueError, match=r"point \(50, 50\) is outside the image \(width 60, height 40\)"):
        unisam.segment(path, points=[[50, 50]], model="unisam-tiny")  # inside the stored 40 x 60, not the shown


def test_a_one_pixel_image_is_an_image(tmp_path):
    path = _save(tmp_path, "one.png", Image.fromarray(np.full((1, 1, 3), 200, np.uint8)))
    found = unisam.segment(path, points=[[0.5, 0.5]], model="unisam-tiny")
    assert found.masks.shape == (1, 1, 1)
    everything = unisam.segment_everything(path, model="unisam-tiny", points_per_side=2)
    assert everything.masks.shape[1:] == (1, 1) and everything.image_size == (1, 1)
