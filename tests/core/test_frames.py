"""unisam.open_frames: arrays, image sequences, directories, multi-page TIFFs and real video files
(written here with PyAV), read lazily; bad input gives clear errors."""

from __future__ import annotations

import av
import numpy as np
import pytest
import tifffile
from PIL import Image

from unisam import Frames, load_image, open_frames
from unisam.frames import VideoReader

T, H, W = 12, 48, 64


def moving_square(t: int) -> np.ndarray:
    """(H, W, 3) uint8: a bright square moving right over a background whose blue level is t."""
    frame = np.zeros((H, W, 3), np.uint8)
    frame[..., 2] = 10 * t
    frame[10:26, 4 + 3 * t : 20 + 3 * t] = (220, 180, 40)
    return frame


CLIP = np.stack([moving_square(t) for t in range(T)])


def write_video(path, frames: np.ndarray, codec: str, **context) -> None:
    """Encode (T, H, W, 3) uint8 frames at 10 fps with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        for name, value in context.items():
            setattr(stream.codec_context, name, value)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mkv"
    write_video(path, CLIP, "ffv1")
    return path


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    """H.264 with B-frames and a keyframe every 4 frames: decode order differs from display order."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, CLIP, "libx264", gop_size=4, max_b_frames=2)
    return path


def test_an_array_is_read_frame_by_frame():
    stack = np.random.default_rng(0).integers(0, 4000, (5, H, W)).astype(np.uint16)
    frames = open_frames(stack)
    assert isinstance(frames, Frames) and len(frames) == 5 and frames.size == (H, W)
    for t in range(5):
        np.testing.assert_array_equal(frames[t], load_image(stack[t]))  # each frame stretched alone
    np.testing.assert_array_equal(frames[-1], frames[4])
    assert [f.shape for f in frames] == [(H, W, 3)] * 5
    assert open_frames(frames) is frames
    with pytest.raises(IndexError, match="outside the 5 frames"):
        frames[5]
    with pytest.raises(ValueError, match="one image"):
        open_frames(CLIP[0])
    with pytest.raises(ValueError, match="one image"):
        open_frames(CLIP[0, ..., 0])


def test_a_lazy_sequence_is_read_only_when_asked(tmp_path):
    reads = []

    class Stack:
        def __len__(self):
            return T

        def __getitem__(self, t):
            reads.append(t)
            return CLIP[t]

    frames = open_frames(Stack())
    assert len(frames) == T and reads == [0]  # frame 0 gives the size
    np.testing.assert_array_equal(frames[7], CLIP[7])
    assert reads == [0, 7]


def test_directories_and_multi_page_tiffs(tmp_path):
    for t in (2, 0, 1):  # written out of order, read in name order
        Image.fromarray(CLIP[t]).save(tmp_path / f"frame{t:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    frames = open_frames(tmp_path)
    assert len(frames) == 3
    for t in range(3):
        np.testing.assert_array_equal(frames[t], CLIP[t])
    stack = np.random.default_rng(1).integers(0, 65535, (4, H, W)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", stack)  # one page of 4 samples: memory-mapped
    tifffile.imwrite(tmp_path / "imagej.tif", stack, imagej=True, metadata={"axes": "TYX"})  # a page per frame
    tifffile.imwrite(tmp_path / "zlib.tif", stack, compression="zlib")
    tifffile.imwrite(tmp_path / "rgb.tif", CLIP[:3])
    for name, expected in [("plain", stack), ("imagej", stack), ("zlib", stack), ("rgb", CLIP[:3])]:
        with open_frames(tmp_path / f"{name}.tif") as pages:
            assert len(pages) == len(expected), name
            for t in range(len(expected)):
                np.testing.assert_array_equal(pages[t], load_image(expected[t]))
    tifffile.imwrite(tmp_path / "one.tif", stack[0])
    with pytest.raises(ValueError, match=r"shape \(48, 64\).*not frames"):
        open_frames(tmp_path / "one.tif")


def test_frames_of_different_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"frame 2 has size \(48, 60\), frame 0 \(48, 64\)"):
        open_frames([CLIP[0], CLIP[1], CLIP[2, :, :60]])
    Image.fromarray(CLIP[0]).save(tmp_path / "a.png")
    Image.fromarray(CLIP[1, :40]).save(tmp_path / "b.png")
    frames = open_frames([tmp_path / "a.png", tmp_path / "b.png"])  # files: checked when read
    with pytest.raises(ValueError, match="all frames must have one"):
        frames[1]


def test_empty_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        open_frames([])
    with pytest.raises(ValueError, match="no frames"):
        open_frames(np.zeros((0, H, W), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        open_frames(tmp_path)  # a directory without images
    with pytest.raises(FileNotFoundError):
        open_frames(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="cannot read frames"):
        open_frames(42)


def test_a_lossless_video_reads_back_exactly_and_lazily(lossless):
    frames = open_frames(lossless)
    assert len(frames) == T and frames.size == (H, W)
    assert frames.reader.decoded == 1  # opening counts packets and decodes only frame 0
    np.testing.assert_array_equal(frames[3], CLIP[3])
    assert frames.reader.decoded == 4  # frames 1..3 decoded on the way, nothing more
    for t in range(T):
        np.testing.assert_array_equal(frames[t], CLIP[t])
    frames.close()


def test_random_access_in_a_video_with_b_frames(h264):
    forwards = [f.astype(int) for f in open_frames(h264)]
    assert len(forwards) == T
    assert max(np.abs(f - c).mean() for f, c in zip(forwards, CLIP)) < 3  # lossy, but these frames
    reader = VideoReader(h264, cache_bytes=2 * H * W * 3)  # room for two decoded frames
    for t in reversed(range(T)):  # backwards: a seek to the keyframe before each missing frame
        np.testing.assert_array_equal(reader(t), forwards[t])
        assert len(reader._cache) <= 2  # never the whole video in memory
    # each keyframe interval (4 frames) is decoded about once per 2 frames stepped back
    assert T < reader.decoded <= 3 * T
    np.testing.assert_array_equal(reader(5), forwards[5])
    reader.close()


def test_corrupt_and_truncated_videos_are_clear_errors(tmp_path, h264):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 200)
    with pytest.raises(ValueError, match="cannot read video .*garbage.mp4"):
        open_frames(garbage)
    data = h264.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # mp4 keeps its index at the end: gone
    with pytest.raises(ValueError, match="cannot read video .*truncated.mp4"):
        open_frames(truncated)
    text = tmp_path / "frames.txt"
    text.write_text("frame 1\nframe 2\n")
    with pytest.raises(ValueError, match="cannot read video"):
        open_frames(text)
