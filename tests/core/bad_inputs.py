"""A corpus of bad inputs (issue #19), generated from code into a directory: nothing binary is committed.

Each :class:`BadInput` writes its files with ``make(directory)`` and says how the core and the ``unisam``
command meet them: ``core(made)`` the library calls that must each raise ``exception`` (an image goes
through load_image, segment and segment_everything; None: the input has no library form, e.g. a
command-line option), ``cli(made, directory)`` the command's arguments (None: no command-line form,
e.g. an in-memory array). ``error`` is a regular expression the one-line message
must match, in the exception and on the command's stderr alike.
"""

from __future__ import annotations

import io
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

import unisam
from unisam.registry import get_card

H, W = 48, 64  # the good test image: small, so every call that gets past the checks stays fast


def good_image() -> np.ndarray:
    image = np.full((H, W, 3), 30, np.uint8)
    image[10:30, 12:36] = (220, 200, 180)
    return image


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes | None = None) -> bytes:
    """An 8-bit RGB PNG with the given header; ``idat`` the compressed rows (None: no IDAT chunk at all)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = b"" if idat is None else _png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + header + data + _png_chunk(b"IEND", b"")


def encoded(fmt: str, array: np.ndarray | None = None) -> bytes:
    """``array`` (default: random 64 x 64 RGB, which compresses badly, so cuts land inside the data)."""
    array = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8) if array is None else array
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    data = bytearray(encoded("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header that claims ``width`` x ``height``, followed by a few bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = bytes(64)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF (8-bit gray, one strip of 16 bytes) that claims ``width`` x ``height``."""
    strip = 8 + 2 + 12 * 9 + 4
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, strip), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(16)


def png_with_bad_crc() -> bytes:
    data = bytearray(encoded("PNG"))
    ihdr_crc = 8 + 8 + 13  # signature, IHDR length + tag, IHDR data
    data[ihdr_crc] ^= 0xFF
    return bytes(data)


class _RunsCode:
    """Unpickling this would call exec: a checkpoint that would run code."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('the pickle ran code')",))


def _export_copy(directory: Path, damage: Callable[[Path], None]) -> Path:
    """A copy of the bundled model's export directory, damaged by ``damage``."""
    out = directory / "export"
    shutil.copytree(get_card("unisam-tiny").bundled, out)
    damage(out)
    return out


@dataclass(frozen=True)
class BadInput:
    name: str
    make: Callable[[Path], Any]
    error: str
    core: Callable[[Any], list[Callable[[], object]]] | None
    cli: Callable[[Any, Path], list[str]] | None
    exception: type[BaseException] = ValueError


# ------------------------------------------------------------------ how each kind is called


def _file(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(data() if callable(data) else data)
        return path

    return make


def _tiff(name: str, array: np.ndarray, **options: Any) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        tifffile.imwrite(directory / name, array, **options)
        return directory / name

    return make


def _good_png(directory: Path) -> Path:
    path = directory / "good.png"
    Image.fromarray(good_image()).save(path)
    return path


def _image_core(source: Any) -> list[Callable[[], object]]:
    """The public doors an image comes through; each must refuse it the same way."""
    return [
        lambda: unisam.load_image(source),
        lambda: unisam.segment(source, points=[[0.5, 0.5]], model="unisam-tiny"),
        lambda: unisam.segment_everything(source, model="unisam-tiny", points_per_side=2),
    ]


def _segment_cli(path: Path, directory: Path) -> list[str]:
    return ["segment", str(path), "--point", "0.5,0.5", "--out", str(directory / "out.png")]


def image_file(name: str, maker: Callable[[Path], Path], error: str, exception=ValueError) -> BadInput:
    return BadInput(name, maker, error, _image_core, _segment_cli, exception)


def image_array(name: str, array: Any, error: str) -> BadInput:
    return BadInput(name, lambda directory: array, error, _image_core, None)


def prompt(name: str, error: str, *, cli: list[str] | None, **fields: Any) -> BadInput:
    """A bad prompt on the good image: ``fields`` for :func:`unisam.segment`, ``cli`` the same as options."""

    def core(path: Path) -> list[Callable[[], object]]:
        return [lambda: unisam.segment(path, model="unisam-tiny", **fields)]

    command = None if cli is None else (lambda path, directory: ["segment", str(path), *cli, "--out",
                                                                 str(directory / "out.png")])
    return BadInput(name, _good_png, error, core, command)


def _instances() -> unisam.Instances:
    mask = np.zeros((H, W), bool)
    mask[10:30, 12:36] = True
    return unisam.Instances.from_masks(mask[None])


def vocabulary(name: str, words: Any, error: str) -> BadInput:
    """A bad vocabulary for :func:`unisam.label` (refused before any CLIP model is needed)."""

    def make(directory: Path) -> Any:
        return words(directory) if callable(words) else words

    return BadInput(name, make, error, lambda v: [lambda: unisam.label(good_image(), _instances(), v),
                                                  lambda: unisam.segment_and_label(good_image(), v)], None)


def examples(name: str, pairs: Callable[[], Any], error: str) -> BadInput:
    """Bad labelled examples for :func:`unisam.label` by example (on unisam-tiny's SAM features)."""
    return BadInput(name, lambda directory: pairs(), error,
                    lambda ex: [lambda: unisam.label(good_image(), _instances(), examples=ex, segment_model="unisam-tiny")],
                    None)


def weights(name: str, make: Callable[[Path], Path], error: str, model: str | None = "edgesam",
            exception=ValueError) -> BadInput:
    """A bad ``weights=`` (checkpoint file or export directory) for ``model``."""

    def command(path: Path, directory: Path) -> list[str]:
        image = _good_png(directory)
        chosen = ["--model", model] if model else []
        return ["segment", str(image), "--point", "5,5", *chosen, "--weights", str(path), "--out",
                str(directory / "out.png")]

    return BadInput(name, make, error, lambda path: [lambda: unisam.load_model(model, weights=path)], command, exception)


def command(name: str, error: str, args: Callable[[Path, Path], list[str]], make=_good_png) -> BadInput:
    """A mistake only the command line can make (options, output paths)."""
    return BadInput(name, make, error, None, args)


# ------------------------------------------------------------------ the corpus

_RGB = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
_NAN = np.where(np.arange(40 * 50).reshape(40, 50) == 7, np.nan, 0.5).astype(np.float32)
_INF = np.where(np.arange(40 * 50).reshape(40, 50) == 7, np.inf, 0.5).astype(np.float32)
_BOMB = "more than the limit of 178,956,970 pixels"
_TRUNCATED = r"cannot read image \S+: truncated"
_PNG, _JPEG, _TIFF = (lambda: encoded("PNG")), (lambda: encoded("JPEG")), (lambda: encoded("TIFF"))
_SHA = "0" * 64


def _half(data: Callable[[], bytes]) -> Callable[[], bytes]:
    return lambda: data()[: len(data()) // 2]


def _head(data: Callable[[], bytes], n: int = 20) -> Callable[[], bytes]:
    return lambda: data()[:n]


def _write_text(name: str, text: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        (directory / name).write_text(text)
        return directory / name

    return make


def _mkdir(name: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        (directory / name).mkdir()
        return directory / name

    return make


def _pickle_that_runs_code(directory: Path) -> Path:
    path = directory / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"image_encoder.weight": [0.0], "x": _RunsCode()}, f)
    return path


def _cut(name: str) -> Callable[[Path], None]:
    def damage(out: Path) -> None:
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: len(data) // 2])

    return damage


CORPUS: list[BadInput] = [
    # --- image files: empty, not images, truncated, corrupt --------------------------------------
    image_file("empty-file.png", _file("empty.png", b""), r"empty \(0 bytes\)"),
    image_file("text-named-png", _file("notes.png", b"just some text\n"), "not an image format Pillow knows"),
    image_file("text-named-jpg", _file("notes.jpg", b"just some text\n"), "not an image format Pillow knows"),
    image_file("text-named-tif", _file("notes.tif", b"just some text\n"), "not an image format Pillow knows"),
    image_file("html-error-page-png", _file("page.png", b"<html><body>404 Not Found</body></html>"),
               r"starts with b'<html><b'"),
    image_file("truncated-png-half", _file("half.png", _half(_PNG)), _TRUNCATED),
    image_file("truncated-png-header", _file("head.png", _head(_PNG)), _TRUNCATED),
    image_file("truncated-jpeg-half", _file("half.jpg", _half(_JPEG)), _TRUNCATED),
    image_file("truncated-jpeg-header", _file("head.jpg", _head(_JPEG)), "a truncated or corrupt JPEG file"),
    image_file("truncated-tiff-half", _file("half.tif", _half(_TIFF)), _TRUNCATED),
    image_file("truncated-tiff-header", _file("head.tif", _head(_TIFF)), "truncated or corrupt"),
    image_file("png-without-pixel-data", _file("nodata.png", png_bytes(1, 1)), "truncated or corrupt"),
    image_file("png-garbage-pixel-data", _file("garbage.png", png_bytes(8, 8, b"not zlib at all")),
               "truncated or corrupt"),
    image_file("png-bad-crc", _file("crc.png", png_with_bad_crc), "truncated or corrupt"),
    image_file("directory-named-png", _mkdir("folder.png"), "is a directory, not an image file"),
    image_file("missing-file", lambda directory: directory / "nope.png", "image file not found",
               FileNotFoundError),
    # --- decompression bombs: headers that claim too many pixels ---------------------------------
    image_file("png-claims-100000x100000", _file("bomb.png", png_bytes(100_000, 100_000)),
               "has 10,000,000,000 pixels, " + _BOMB),
    image_file("png-claims-20000x20000", _file("bomb20k.png", png_bytes(20_000, 20_000)),
               "has 400,000,000 pixels, " + _BOMB),
    image_file("jpeg-claims-65000x65000", _file("bomb.jpg", lambda: jpeg_claiming(65_000, 65_000)),
               "has 4,225,000,000 pixels, " + _BOMB),
    image_file("bmp-claims-30000x30000", _file("bomb.bmp", bmp_claiming(30_000, 30_000)),
               "has 900,000,000 pixels, " + _BOMB),
    image_file("tiff-claims-100000x100000", _file("bomb.tif", tiff_claiming(100_000, 100_000)),
               "is 100000 x 100000 = 10,000,000,000 pixels, " + _BOMB),
    # --- pixel values and shapes -----------------------------------------------------------------
    image_file("float-tiff-with-nan", _tiff("nan.tif", _NAN), "NaN or infinite"),
    image_file("float-tiff-with-inf", _tiff("inf.tif", _INF), "NaN or infinite"),
    image_file("two-channel-tiff", _tiff("two.tif", np.zeros((40, 50, 2), np.uint8), photometric="minisblack",
                                                   planarconfig="contig"), "1, 3 or 4 channels"),
    image_array("array-with-nan", _NAN, "NaN or infinite"),
    image_array("array-with-inf", _INF, "NaN or infinite"),
    image_array("array-5d", np.zeros((1, 2, 40, 50, 3), np.uint8), "got 5 dimensions"),
    image_array("array-4d-batch", np.zeros((2, 40, 50, 3), np.uint8), r"a batch\? pass one image"),
    image_array("array-1d", np.zeros(50, np.uint8), "got 1 dimensions"),
    image_array("array-channel-first", np.zeros((3, 40, 50), np.uint8), "looks channel-first"),
    image_array("array-empty", np.zeros((0, 50, 3), np.uint8), "image is empty"),
    image_array("array-complex", np.zeros((40, 50), np.complex64), "real-valued"),
    image_array("array-of-objects", np.full((4, 4), None, object), "unsupported image dtype object"),
    image_array("nested-list", [[1, 2], [3, 4]], "unsupported image type list"),
    # --- prompts outside the image, inverted or degenerate boxes ---------------------------------
    prompt("point-right-of-image", r"point \(100, 10\) is outside the image \(width 64, height 48\)",
           points=[[100, 10]], cli=["--point", "100,10"]),
    prompt("point-negative-x", r"point \(-5, 10\) is outside the image", points=[[-5, 10]],
           cli=["--point", "-5,10"]),
    prompt("background-click-above-image", r"point \(10, -3\) is outside the image", points=[[10, -3]],
           point_labels=[0], cli=["--negative", "10,-3"]),
    prompt("point-nan", "points contain NaN", points=[[np.nan, 5]], cli=["--point", "nan,5"]),
    prompt("point-inf", "points contain NaN or infinite", points=[[5, np.inf]], cli=["--point", "5,inf"]),
    prompt("box-partly-outside-top-left", r"box \[-10, -10, 30, 30\] reaches outside the image \(width 64, height 48\)",
           box=[-10, -10, 30, 30], cli=["--box", "-10,-10,30,30"]),
    prompt("box-partly-outside-right", r"box \[30, 10, 80, 40\] reaches outside the image",
           box=[30, 10, 80, 40], cli=["--box", "30,10,80,40"]),
    prompt("box-wholly-outside", r"box \[100, 100, 120, 120\] lies outside the image",
           box=[100, 100, 120, 120], cli=["--box", "100,100,120,120"]),
    prompt("box-inverted", "x1 < x2 and y1 < y2", box=[50, 40, 10, 10], cli=["--box", "50,40,10,10"]),
    prompt("box-zero-width", "x1 < x2 and y1 < y2", box=[10, 10, 10, 30], cli=["--box", "10,10,10,30"]),
    prompt("box-zero-height", "x1 < x2 and y1 < y2", box=[10, 20, 30, 20], cli=["--box", "10,20,30,20"]),
    prompt("box-nan", "box contains NaN", box=[10, np.nan, 30, 30], cli=["--box", "10,nan,30,30"]),
    prompt("box-three-numbers", "box must be 4 numbers", box=[1, 2, 3], cli=None),
    prompt("empty-prompt", "empty prompt", cli=[]),
    prompt("click-polarity-2", r"must be 1 \(foreground\) or 0", points=[[5, 5]], point_labels=[2], cli=None),
    prompt("more-labels-than-points", "got 1 points but 2 point labels", points=[[5, 5]], point_labels=[1, 0],
           cli=None),
    prompt("points-with-three-coordinates", r"shape \(N, 2\)", points=[[1, 2, 3]], cli=None),
    # --- vocabularies and examples ---------------------------------------------------------------
    vocabulary("vocabulary-empty-list", [], "the vocabulary is empty"),
    vocabulary("vocabulary-blank-names", ["", "  "], "has no name"),
    vocabulary("vocabulary-duplicate", ["cell", "Cell"], "in the vocabulary twice"),
    vocabulary("vocabulary-bare-string", "cell", "is a string"),
    vocabulary("vocabulary-file-of-comments", _write_text("vocab.txt", "# nothing but comments\n\n"),
               "the vocabulary is empty"),
    vocabulary("vocabulary-overlong-name", ["x" * 400], "at most 300"),
    examples("examples-none-given", lambda: [], "no labelled, non-empty mask"),
    examples("examples-without-labels", lambda: [(good_image(), _instances())], "need labels"),
    examples("examples-not-pairs", lambda: [good_image()], r"must be an \(image, Instances\) pair"),
    # --- checkpoints and exports -----------------------------------------------------------------
    weights("checkpoint-pickle-runs-code", _pickle_that_runs_code, "refers to builtins.exec.*not executed"),
    weights("checkpoint-truncated", _file("cut.pth", lambda: b"PK\x03\x04" + bytes(100)), "truncated or corrupt"),
    weights("checkpoint-text-named-safetensors", _file("notes.safetensors", b"just text"), "truncated or corrupt"),
    weights("checkpoint-missing", lambda directory: directory / "gone.pth", "gone.pth does not exist",
            exception=FileNotFoundError),
    weights("export-encoder-truncated", lambda d: _export_copy(d, _cut("encoder.onnx")), "could not load ONNX model",
            model=None),
    weights("export-decoder-is-text", lambda d: _export_copy(d, lambda o: (o / "decoder.onnx").write_text("hi")),
            "could not load ONNX model", model=None),
    weights("export-without-model-json", lambda d: _export_copy(d, lambda o: (o / "model.json").unlink()),
            "has no model.json", model=None),
    weights("export-model-json-broken", lambda d: _export_copy(d, lambda o: (o / "model.json").write_text("{")),
            "is not readable JSON", model=None),
    weights("bundled-model-given-weights", _file("own.pth", b"x"), "ships with unisam: it takes no weights",
            model="unisam-tiny"),
    # --- the command line: options and output paths ----------------------------------------------
    command("out-into-missing-folder", "the folder \\S+ does not exist; create it first",
            lambda p, d: ["segment", str(p), "--point", "5,5", "--out", str(d / "missing" / "mask.png")]),
    command("out-is-a-folder", "it is a folder; give a file name",
            lambda p, d: ["segment", str(p), "--point", "5,5", "--out", str(d)]),
    command("out-unknown-suffix", r"\.xyz is not an image format",
            lambda p, d: ["segment", str(p), "--point", "5,5", "--out", str(d / "mask.xyz")]),
    command("out-exists", "pass --overwrite to replace it",
            lambda p, d: ["segment", str(p), "--point", "5,5", "--out", str(p)]),
    command("rle-into-missing-folder", "the folder \\S+ does not exist",
            lambda p, d: ["everything", str(p), "--out", str(d / "l.png"), "--rle", str(d / "no" / "r.json")]),
    command("point-not-numbers", r"expected X,Y \(pixels, comma-separated\), got 'a,b'",
            lambda p, d: ["segment", str(p), "--point", "a,b", "--out", str(d / "m.png")]),
    command("point-three-numbers", r"expected X,Y .*got '1,2,3'",
            lambda p, d: ["segment", str(p), "--point", "1,2,3", "--out", str(d / "m.png")]),
    command("box-two-numbers", r"expected X1,Y1,X2,Y2 .*got '1,2'",
            lambda p, d: ["segment", str(p), "--box", "1,2", "--out", str(d / "m.png")]),
    command("points-per-side-zero", "points_per_side and points_per_batch must be >= 1",
            lambda p, d: ["everything", str(p), "--points-per-side", "0", "--out", str(d / "l.png")]),
    command("unknown-model", "unknown model 'no-such-model'",
            lambda p, d: ["segment", str(p), "--point", "5,5", "--model", "no-such-model", "--out", str(d / "m.png")]),
]

# the corpus's bad image files, each refused by every image door and by the CLI: what a host's
# dataset, project or layer may hold
IMAGE_FILES: list[BadInput] = [e for e in CORPUS if e.core is _image_core and e.cli is not None]
