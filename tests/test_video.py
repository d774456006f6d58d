"""Video decoding (deepfake.video): containers, uniform sampling, limits, damaged and foreign input.

Every video here is written by write_video into a temporary folder. Frame i is flat colour
R = 8 i + 8, G = 248 - 8 i, B = 128 (plus a little noise in some), so a decoded frame tells
which frame it is and that the channels are in RGB order.
"""

import contextlib
import io

import numpy as np
import pytest
from PIL import Image

import deepfake.video as video
from deepfake.config import VideoConfig
from deepfake.video import (
    VIDEO_EXTENSIONS,
    VideoError,
    check_video,
    is_video_bytes,
    sample_frames,
    write_video,
)

SIZE = 64
FPS = 10


def make_frames(n, noise=0, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        frame = np.empty((size, size, 3), np.float64)
        frame[..., 0], frame[..., 1], frame[..., 2] = 8 * i + 8, 248 - 8 * i, 128
        if noise:
            frame += rng.integers(-noise, noise + 1, frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def frame_numbers(result):
    """Which written frame each sampled frame is, read from its colour (and RGB order checked)."""
    numbers = []
    for frame in result.frames:
        r, g, b = frame.reshape(-1, 3).mean(axis=0)
        i = round((r - 8) / 8)
        assert abs(r - (8 * i + 8)) < 3 and abs(g - (248 - 8 * i)) < 3 and abs(b - 128) < 3, (r, g, b)
        numbers.append(i)
    return numbers


def uniform(total, n):
    """The expected sample: the centre of each of n equal segments."""
    return list(range(total)) if total <= n else [int((k + 0.5) * total / n) for k in range(n)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """30 frames at 10 fps, a little noise (realistic sizes for cutting), one file per extension."""
    root = tmp_path_factory.mktemp("videos")
    frames = make_frames(30, noise=6)
    paths = {}
    for ext in VIDEO_EXTENSIONS:
        paths[ext] = root / f"clip{ext}"
        write_video(paths[ext], frames, fps=FPS)
    return paths


def jpeg_bytes():
    buf = io.BytesIO()
    Image.fromarray(make_frames(1)[0]).save(buf, format="JPEG")
    return buf.getvalue()


def png_bytes():
    buf = io.BytesIO()
    Image.fromarray(make_frames(1)[0]).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", VIDEO_EXTENSIONS)
def test_every_container_round_trips_with_uniform_sampling(videos, ext):
    path = videos[ext]
    result = sample_frames(path, VideoConfig(frames=8))
    expected = uniform(30, 8)
    assert expected == [1, 5, 9, 13, 16, 20, 24, 28]
    assert result.indices == expected
    assert frame_numbers(result) == expected  # the frames really are those frames, in order
    for frame in result.frames:
        assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
    assert result.timestamps == pytest.approx([i / FPS for i in expected], abs=1e-3)
    assert (result.total_frames, result.limited, result.truncated) == (30, False, False)
    assert check_video(path) is None
    assert is_video_bytes(path.read_bytes())


def test_n_overrides_the_configured_count(videos):
    result = sample_frames(videos[".mp4"], VideoConfig(frames=8), n=3)
    assert result.indices == frame_numbers(result) == [5, 15, 25]


def test_fewer_frames_than_n_gives_every_frame(tmp_path):
    path = tmp_path / "short.mkv"
    write_video(path, make_frames(5), fps=FPS)
    result = sample_frames(path, VideoConfig(frames=8))
    assert result.indices == frame_numbers(result) == [0, 1, 2, 3, 4]
    assert result.total_frames == 5 and not result.limited and not result.truncated


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".avi"])
def test_bytes_input_equals_path_input_and_is_deterministic(videos, ext):
    a = sample_frames(videos[ext], VideoConfig())
    b = sample_frames(videos[ext].read_bytes(), VideoConfig())
    c = sample_frames(videos[ext].read_bytes(), VideoConfig())
    for other in (b, c):
        assert other.indices == a.indices and other.timestamps == a.timestamps
        assert other.total_frames == a.total_frames
        assert all(np.array_equal(x, y) for x, y in zip(a.frames, other.frames, strict=True))


def test_write_video_is_deterministic_and_checks_its_input(tmp_path):
    frames = make_frames(6, noise=6)
    for ext in VIDEO_EXTENSIONS:
        write_video(tmp_path / f"a{ext}", frames)
        write_video(tmp_path / f"b{ext}", frames)
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes(), ext
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", [np.zeros((63, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "x.gif", frames)
    with pytest.raises(ValueError, match="one size"):
        write_video(tmp_path / "mixed.mp4", [np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"a{e}" for e in VIDEO_EXTENSIONS] + [f"b{e}" for e in VIDEO_EXTENSIONS])  # no partial files left


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".avi"])
def test_max_frames_samples_only_the_first_frames(tmp_path, ext):
    path = tmp_path / f"long{ext}"
    write_video(path, make_frames(30), fps=FPS)
    result = sample_frames(path, VideoConfig(frames=8, max_frames=20))
    assert result.limited and not result.truncated and result.total_frames == 20
    assert result.indices == frame_numbers(result) == uniform(20, 8)
    assert max(result.indices) < 20
    exact = sample_frames(path, VideoConfig(frames=8, max_frames=30))  # a video exactly at the limit
    assert not exact.limited and exact.total_frames == 30


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_max_seconds_samples_only_the_first_seconds(tmp_path, ext):
    path = tmp_path / f"six_seconds{ext}"
    write_video(path, make_frames(30), fps=5)  # 6 s
    result = sample_frames(path, VideoConfig(frames=8, max_seconds=1.0))
    assert result.limited and not result.truncated and result.total_frames == 5
    assert result.indices == frame_numbers(result) == [0, 1, 2, 3, 4]
    assert all(t < 1.0 for t in result.timestamps)
    result = sample_frames(path, VideoConfig(frames=4, max_seconds=3.0))
    assert result.limited and result.total_frames == 15
    assert result.indices == frame_numbers(result) == uniform(15, 4)


def test_counting_and_decoding_stop_at_the_limit(tmp_path, monkeypatch):
    """However long the stream, neither pass reads more than the limit's packets."""
    path = tmp_path / "long.mkv"
    write_video(path, make_frames(30), fps=FPS)
    demuxed = []
    opened = video._opened

    class Counting:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def demux(self, *args, **kwargs):
            for packet in self._container.demux(*args, **kwargs):
                demuxed[-1] += 1
                yield packet

    @contextlib.contextmanager
    def counting_opened(source, max_pixels):
        with opened(source, max_pixels) as (container, stream):
            demuxed.append(0)
            yield Counting(container), stream

    monkeypatch.setattr(video, "_opened", counting_opened)
    result = sample_frames(path, VideoConfig(frames=4, max_frames=8))
    assert result.limited and result.indices == frame_numbers(result) == uniform(8, 4)
    assert len(demuxed) == 2 and max(demuxed) <= 9, demuxed  # count pass, decode pass; 30 frames in the file


# --------------------------------------------------------------------------- damaged and foreign input


@pytest.mark.parametrize("ext", VIDEO_EXTENSIONS)
def test_a_cut_video_gives_the_frames_before_the_cut(videos, ext):
    raw = videos[ext].read_bytes()
    result = sample_frames(raw[: int(len(raw) * 0.6)], VideoConfig(frames=8))
    # What survives depends on the container (MP4 and MOV are written with the index first, so they open).
    assert result.truncated and not result.limited
    assert 1 <= result.total_frames < 30
    assert result.indices == frame_numbers(result) == uniform(result.total_frames, 8)


def test_a_cut_mp4_without_its_index_or_with_no_whole_frame_is_refused(tmp_path, videos):
    import av

    path = tmp_path / "index_last.mp4"  # as cameras write them: the index (moov) after the data
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for i, array in enumerate(make_frames(10, noise=6)):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert sample_frames(path, VideoConfig()).total_frames == 10
    raw = path.read_bytes()
    with pytest.raises(VideoError, match="^cannot decode video: "):
        sample_frames(raw[: int(len(raw) * 0.6)], VideoConfig())
    raw = videos[".mp4"].read_bytes()
    with pytest.raises(VideoError, match="no decodable frames"):
        sample_frames(raw[: int(len(raw) * 0.05)], VideoConfig())  # the index, but not one whole frame
    (tmp_path / "cut.mp4").write_bytes(raw[: int(len(raw) * 0.05)])
    assert check_video(tmp_path / "cut.mp4") == "no decodable frames"


@pytest.mark.parametrize("raw", [b"", b"\x00" * 64, np.random.default_rng(0).bytes(4096), jpeg_bytes(), png_bytes(),
                                 b"GIF89a" + bytes(64)], ids=["empty", "zeros", "random", "jpeg", "png", "gif"])
def test_not_a_video(tmp_path, raw):
    assert not is_video_bytes(raw)
    with pytest.raises(VideoError) as err:
        sample_frames(raw, VideoConfig())
    assert "\n" not in str(err.value) and len(str(err.value)) < 200
    path = tmp_path / "file.mp4"
    path.write_bytes(raw)
    with pytest.raises(VideoError, match=f"^{path}: "):
        sample_frames(path, VideoConfig())
    assert check_video(path) in ("empty file", "not a video in a supported container (MP4, MOV, AVI, WebM, MKV)")


@pytest.mark.parametrize("head", [b"\x1a\x45\xdf\xa3", b"RIFF\x00\x10\x00\x00AVI LIST", b"\x00\x00\x00\x18ftypisom"])
def test_a_container_signature_on_garbage(head):
    raw = head + np.random.default_rng(1).bytes(4096)
    assert is_video_bytes(raw)  # the signature alone
    with pytest.raises(VideoError, match="^cannot decode video: |no video stream|no frames|no decodable") as err:
        sample_frames(raw, VideoConfig())
    assert "\\x" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm", ".avi"])
def test_a_video_without_frames_is_refused(tmp_path, ext):
    import av

    path = tmp_path / f"empty{ext}"
    out = av.open(str(path), "w")
    stream = out.add_stream("libvpx" if ext == ".webm" else "mpeg4", rate=FPS)
    stream.width = stream.height = SIZE
    stream.pix_fmt = "yuv420p"
    out.start_encoding()
    out.mux(stream.encode(None))
    out.close()
    assert is_video_bytes(path.read_bytes())
    with pytest.raises(VideoError):
        sample_frames(path, VideoConfig())
    assert check_video(path) is not None


def test_an_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(VideoError, match="no video stream$"):
        sample_frames(path, VideoConfig())
    assert check_video(path) == "no video stream"


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match="cannot read: No such file"):
        sample_frames(tmp_path / "missing.mp4", VideoConfig())
    assert check_video(tmp_path / "missing.mp4") == "cannot read: No such file or directory"


def test_is_video_bytes_recognises_each_container(videos):
    for ext, path in videos.items():
        assert is_video_bytes(path.read_bytes()[:16]), ext
    assert not is_video_bytes(jpeg_bytes()) and not is_video_bytes(png_bytes())
    assert not is_video_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")  # a WebP image is RIFF too
    assert not is_video_bytes(b"ftyp")  # too short to carry a box


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_frames_come_upright_as_the_display_matrix_says(tmp_path, rotation):
    import av

    path = tmp_path / f"phone{rotation}.mp4"
    landscape = np.zeros((32, 64, 3), np.uint8)
    landscape[:8, :8] = 255  # a white top-left corner
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a display matrix")
        stream.set_display_rotation(rotation)  # counterclockwise, as phones record upright video
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(landscape, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    [frame] = sample_frames(path, VideoConfig(), n=1).frames
    expected = np.rot90(landscape, rotation // 90)
    assert frame.shape == expected.shape
    assert np.abs(frame.astype(int) - expected).mean() < 10


# --------------------------------------------------------------------------- the demo video dataset


def _digest(root):
    import hashlib

    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_demo_video_dataset_layout_counts_and_same_bytes(tmp_path):
    from deepfake.demo import make_demo_video_dataset

    small = {"per_class": 7, "n_frames": 3, "width": 96, "height": 64}
    counts = make_demo_video_dataset(tmp_path / "a", seed=1, **small)
    assert counts == {"train": {"real": 5, "fake": 5}, "val": {"real": 1, "fake": 1}, "test": {"real": 1, "fake": 1}}
    for split, per in counts.items():
        for cls, n in per.items():
            files = sorted((tmp_path / "a" / split / cls).iterdir())
            assert len(files) == n and all(f.suffix == ".mp4" for f in files)
    clip = sample_frames(files[0], VideoConfig(frames=8))
    assert clip.total_frames == 3 and clip.frames[0].shape == (64, 96, 3) and not clip.truncated
    make_demo_video_dataset(tmp_path / "b", seed=1, **small)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    make_demo_video_dataset(tmp_path / "c", seed=2, per_class=7, n_frames=1, width=96, height=64, with_images=True)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert len(list((tmp_path / "c").rglob("*.jpg"))) == len(list((tmp_path / "c").rglob("*.mp4"))) == 14
    with pytest.raises(ValueError, match="too small"):
        make_demo_video_dataset(tmp_path / "d", width=96, height=48)


def _period2(x):
    """How differently neighbouring pixels relate at even and odd positions (2x upsampling makes that
    2-periodic; camera noise does not)."""
    x = x.astype(float) @ [0.299, 0.587, 0.114]
    scores = []
    for d in (np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0)).T):
        even, odd = d[:, 0::2].mean(), d[:, 1::2].mean()
        scores.append(abs(even - odd) / (even + odd + 1e-9))
    return max(scores)


def test_demo_fakes_swap_only_the_face_and_leave_an_upsampling_trace():
    from deepfake.demo import make_video_frames

    for seed in range(4):
        real = make_video_frames(np.random.default_rng(seed), 1, 192, 128, fake=False)[0].astype(int)
        fake = make_video_frames(np.random.default_rng(seed), 1, 192, 128, fake=True)[0].astype(int)
        ys, xs = np.nonzero(np.abs(fake - real).max(axis=-1) > 12)  # the same scene: they differ in the face
        face = 192 // 4  # about a quarter of the frame wide
        assert face // 2 < np.ptp(ys) < 2 * face and face // 2 < np.ptp(xs) < 2 * face, (np.ptp(ys), np.ptp(xs))
        cy, cx, r = int(ys.mean()), int(xs.mean()), face // 6
        inner = (slice(cy - r, cy + r), slice(cx - r, cx + r))
        assert _period2(fake[inner]) > 2 * _period2(real[inner]), seed


def test_demo_data_video_command_writes_the_layout(tmp_path, monkeypatch):
    import functools

    from click.testing import CliRunner

    import deepfake.demo
    from deepfake.cli import main

    # the real writer, with 2 frames a video to keep the test fast
    monkeypatch.setattr(deepfake.demo, "make_demo_video_dataset",
                        functools.partial(deepfake.demo.make_demo_video_dataset, n_frames=2))
    result = CliRunner().invoke(main, ["demo-data", str(tmp_path / "out"), "--video", "--per-class", "10",
                                       "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "video" in result.output
    for split, n in {"train": 7, "val": 2, "test": 1}.items():
        for cls in ("real", "fake"):
            files = list((tmp_path / "out" / split / cls).glob("*.mp4"))
            assert len(files) == n
    clip = sample_frames(files[0], VideoConfig())
    assert clip.frames[0].shape == (84, 128, 3) and clip.total_frames == 2  # --size 32: faces of 32 px, 128 px wide


def test_the_face_detector_finds_the_demo_face_real_and_swapped(tmp_path):
    pytest.importorskip("mtcnn")
    from mtcnn import MTCNN

    from deepfake.demo import make_video_frames

    detector = MTCNN()
    for fake in (False, True):
        path = tmp_path / f"{fake}.mp4"
        write_video(path, make_video_frames(np.random.default_rng(5), 3, 192, 128, fake=fake))
        frame = sample_frames(path, VideoConfig(), n=1).frames[0]
        faces = [f for f in detector.detect_faces(frame) if f["confidence"] > 0.9]
        assert len(faces) == 1, (fake, faces)
        x, y, w, h = faces[0]["box"]
        assert 192 // 8 <= w <= 192 // 2 and 0 <= x and x + w <= 192, (fake, faces)
