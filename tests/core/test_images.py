"""unisam.images: every accepted input becomes (H, W, 3) uint8 RGB; bad inputs get clear errors."""

import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from unisam.images import image_digest, load_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (7, 9), dtype=np.uint8)


def _expected_stretch(values: np.ndarray) -> np.ndarray:
    """The documented mapping: 0.5..99.5 percentiles -> 0..255, clipped, rounded (independent code)."""
    v = values.astype(np.float64)
    lo, hi = np.percentile(v, 0.5), np.percentile(v, 99.5)
    out = np.clip((v - lo) / (hi - lo) * 255.0, 0, 255)
    return np.round(out).astype(np.uint8)


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.stack([gray] * 3, axis=-1)


def _check(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.dtype == np.uint8 and out.shape == (*shape, 3) and out.flags.c_contiguous


# --- arrays -------------------------------------------------------------------------------------


def test_uint8_rgb_unchanged_and_contiguous():
    view = np.ascontiguousarray(RGB[:, ::-1])[:, ::-1]  # a non-contiguous view of RGB
    out = load_image(view)
    _check(out, (7, 9))
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("array", [GRAY, GRAY[:, :, None]])
def test_grayscale_replicated(array):
    out = load_image(array)
    _check(out, (7, 9))
    np.testing.assert_array_equal(out, _rgb(GRAY))


def test_rgba_drops_alpha():
    rgba = np.concatenate([RGB, np.zeros((7, 9, 1), np.uint8)], axis=-1)
    np.testing.assert_array_equal(load_image(rgba), RGB)


def test_bool_maps_to_0_255():
    mask = GRAY > 128
    np.testing.assert_array_equal(load_image(mask), _rgb(np.where(mask, 255, 0).astype(np.uint8)))


def test_float_unit_range_is_stretched_like_16_bit():
    # a 16-bit micrograph (signal on an offset, as the Cell Tracking Challenge's HeLa frames) converted
    # to float in [0, 1] (skimage.util.img_as_float) must look to the model as the 16-bit original does,
    # not as the flat grey of v * 255 (here 128..135)
    raw = (33000 + RNG.gamma(2.0, 200.0, (60, 50))).clip(0, 65535).astype(np.uint16)
    as_float = raw.astype(np.float32) / 65535
    out = load_image(as_float)
    assert int(out.max()) - int(out.min()) == 255
    assert np.abs(out.astype(int) - load_image(raw).astype(int)).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int16, np.float32, np.float64])
def test_wide_dtypes_use_percentile_stretch(dtype):
    values = RNG.integers(0, 4000, (40, 30)).astype(dtype) - (1000 if dtype != np.uint16 else 0)
    out = load_image(values)
    _check(out, (40, 30))
    expected = _expected_stretch(values)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1  # rounding of x.5
    assert out.min() == 0 and out.max() == 255


def test_uint16_rgb_stretch_is_global_over_channels():
    img = np.zeros((20, 20, 3), np.uint16)
    img[..., 0] = 60000
    img[..., 1] = 30000
    img[:10, :, 2] = 1000  # half of the blue channel low, half zero
    out = load_image(img)
    red, green = int(out[0, 0, 0]), int(out[0, 0, 1])
    assert red == 255 and 0 < green < red  # colour balance kept, not per-channel stretched


def test_sparse_spots_fall_back_to_min_max():
    img = np.full((100, 100), 500, np.uint16)
    img[5, 5] = 4000  # 0.01% of pixels: both percentiles equal the background
    out = load_image(img)
    assert out[5, 5, 0] == 255 and out[0, 0, 0] == 0


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_constant_image_becomes_zeros(dtype):
    out = load_image(np.full((4, 5), 7, dtype))
    _check(out, (4, 5))
    assert not out.any()


@pytest.mark.parametrize(
    "array,match",
    [
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 0), np.uint8), "empty"),
        (np.array([[0.1, np.nan]]), "NaN"),
        (np.array([[0.1, np.inf]]), "NaN or infinite"),
        (np.zeros((5,), np.uint8), "2 dimensions|1 dimensions"),
        (np.zeros((1, 5, 5, 3), np.uint8), "batch"),
        (np.zeros((3, 40, 50), np.uint8), r"channel-first.*transpose"),
        (np.zeros((40, 50, 2), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((4, 4), np.complex64), "real-valued"),
        (np.zeros((4, 4), object), "dtype"),
    ],
)
def test_bad_arrays_raise_clear_errors(array, match):
    with pytest.raises(ValueError, match=match):
        load_image(array)


def test_unsupported_type():
    with pytest.raises(ValueError, match="file path, a PIL image or a numpy array"):
        load_image([[1, 2], [3, 4]])


# --- PIL images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr"])
def test_pil_modes_match_pillow_rgb_conversion(mode):
    img = Image.fromarray(RGB).convert(mode)
    expected = np.asarray(img.convert("RGB"))  # Pillow's own conversion as the oracle
    np.testing.assert_array_equal(load_image(img), expected)


def test_pil_16bit_and_float_modes_keep_precision():
    values = RNG.integers(0, 65535, (12, 10)).astype(np.uint16)
    img16 = Image.fromarray(values)
    assert img16.mode == "I;16"
    np.testing.assert_array_equal(load_image(img16), load_image(values))
    img32 = Image.fromarray(values.astype(np.int32))
    assert img32.mode == "I"
    np.testing.assert_array_equal(load_image(img32), load_image(values))
    imgf = Image.fromarray(values.astype(np.float32) / 1000)
    assert imgf.mode == "F"
    np.testing.assert_array_equal(load_image(imgf), load_image(values.astype(np.float32) / 1000))


def test_pil_mode_1_is_binary():
    img = Image.fromarray(GRAY > 100).convert("1")
    np.testing.assert_array_equal(load_image(img), _rgb(np.where(GRAY > 100, 255, 0).astype(np.uint8)))


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_lossless_files_round_trip(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(RGB).save(path)
    np.testing.assert_array_equal(load_image(path), RGB)
    np.testing.assert_array_equal(load_image(str(path)), RGB)


def test_jpeg_matches_pillow_decode(tmp_path):
    path = tmp_path / "img.jpg"
    Image.fromarray(RGB).save(path, quality=90)
    np.testing.assert_array_equal(load_image(path), np.asarray(Image.open(path).convert("RGB")))


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path, exif=exif)
    assert load_image(path).shape == (20, 10, 3)


def test_16bit_gray_png_keeps_16_bits(tmp_path):
    values = (np.arange(30 * 20).reshape(30, 20) * 97 % 65536).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(load_image(path), load_image(values))


def _png16(values: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand, cycling through all five PNG row filters."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w = values.shape[:2]
    rows = values.astype(">u2").reshape(h, -1).view(np.uint8).reshape(h, -1).astype(np.int32)
    bpp = values.shape[2] * 2
    raw = b""
    for y, row in enumerate(rows):
        prior = rows[y - 1] if y else np.zeros_like(row)
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        p = left + prior - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
        kind = y % 5
        predictor = [0, left, prior, (left + prior) // 2, paeth][kind]
        raw += bytes([kind]) + ((row - predictor) % 256).astype(np.uint8).tobytes()
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("channels,color_type", [(3, 2), (4, 6)])
def test_16bit_colour_png_keeps_16_bits(tmp_path, channels, color_type):
    values = RNG.integers(0, 65536, (11, 13, channels)).astype(np.uint16)
    values[..., :3] //= 256  # all below 256: an 8-bit read (high bytes) would be all zeros
    path = tmp_path / "c16.png"
    path.write_bytes(_png16(values, color_type))
    assert np.asarray(Image.open(path)).dtype == np.uint8  # Pillow alone loses the low bytes
    out = load_image(path)
    np.testing.assert_array_equal(out, load_image(values[..., :3]))
    assert np.abs(out.astype(int) - _expected_stretch(values[..., :3])).max() <= 1


def test_alpha_does_not_affect_stretch():
    rgb = RNG.integers(100, 200, (10, 10, 3)).astype(np.uint16)
    rgba = np.concatenate([rgb, np.full((10, 10, 1), 65535, np.uint16)], axis=-1)
    np.testing.assert_array_equal(load_image(rgba), load_image(rgb))


def test_16bit_tiff_gray_rgb_and_planar(tmp_path):
    gray = RNG.integers(0, 65536, (9, 8)).astype(np.uint16)
    rgb = RNG.integers(0, 65536, (9, 8, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", gray)
    tifffile.imwrite(tmp_path / "c.tiff", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "p.tif", rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(load_image(tmp_path / "g.tif"), load_image(gray))
    np.testing.assert_array_equal(load_image(tmp_path / "c.tiff"), load_image(rgb))
    np.testing.assert_array_equal(load_image(tmp_path / "p.tif"), load_image(rgb))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(path)


@pytest.mark.parametrize("name", ["junk.png", "junk.tif"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=name):
        load_image(path)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.png"):
        load_image(path)


# --- digest -------------------------------------------------------------------------------------


def test_image_digest_stable_and_content_sensitive():
    a = RGB.copy()
    d = image_digest(a)
    assert isinstance(d, str) and len(d) == 32
    assert image_digest(RGB.copy()) == d
    assert image_digest(np.asfortranarray(a)) == d  # layout does not matter, content does
    b = a.copy()
    b[3, 4, 1] ^= 1
    assert image_digest(b) != d
    assert image_digest(a.reshape(9, 7, 3)) != d  # same bytes, different shape
    assert image_digest(a.astype(np.int8)) != d  # same bytes, different dtype
