"""Video files and bytes: recognising them, sampling frames, and writing them (demo data and tests).

Decoding uses PyAV (``av``): its wheels carry their own FFmpeg (demuxers, decoders, libx264, libvpx), so
no system FFmpeg is needed on any platform, and it is actively maintained, with releases following
FFmpeg's. OpenCV's ``VideoCapture`` was the alternative; it reports frame counts from the header (often
wrong), decodes through whichever backend the build has, and gives no control over the demuxer.

Only the containers in :data:`VIDEO_EXTENSIONS` are accepted, recognised by their signature
(:func:`is_video_bytes`) and opened with that one demuxer, so untrusted bytes never reach FFmpeg's other
demuxers (playlists such as HLS or ``concat`` could read other files or the network), and an image is
never taken for a one-frame video. Paths are opened by Python and handed to FFmpeg as a file object, so
a file name is never read as an FFmpeg URL (``http:``, ``concat:``, ...).

:func:`sample_frames` picks ``n`` frames uniformly: it counts the frames by demuxing packets (cheap, no
decoding), then decodes sequentially and converts only the chosen frames to RGB. Both passes stop at
``max_frames`` and ``max_seconds``, so an endless or huge stream costs at most that much work.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepfake.errors import DeepfakeError, first_line
from deepfake.images import DEFAULT_MAX_PIXELS, read_error

if TYPE_CHECKING:
    from deepfake.config import VideoConfig

# The one list of video file extensions, like deepfake.images.IMAGE_EXTENSIONS.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v")
CONTAINER_NAMES = "MP4, MOV, AVI, WebM, MKV"
_SNIFF_BYTES = 16
# ISO base media (MP4, MOV, M4V): a box type at offset 4. Files start with 'ftyp'; old QuickTime files
# may start with another top-level atom.
_MOV_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska and WebM


class VideoError(DeepfakeError):
    """A video that cannot be used: not a video, no video stream, nothing decodable. One line, never
    the input's bytes."""


class VideoTooLarge(VideoError):
    """A video whose frames have more pixels than the limit."""


@dataclass
class SampledFrames:
    """Frames sampled from one video, in stream order."""

    frames: list[np.ndarray] = field(default_factory=list)  # uint8 (H, W, 3) RGB
    indices: list[int] = field(default_factory=list)  # frame numbers in the stream, 0-based, decoder output order
    timestamps: list[float] = field(default_factory=list)  # seconds from the stream's start
    total_frames: int = 0  # frames considered: the whole video, or up to the limits
    limited: bool = False  # the stream was longer than max_seconds/max_frames: only its first part was sampled
    truncated: bool = False  # the data ended or broke early; the frames decoded before are used


# --------------------------------------------------------------------------- recognising


def _demuxer(head: bytes) -> str | None:
    """The FFmpeg demuxer for a file starting with ``head``, or ``None`` if it is no supported container."""
    if len(head) >= 8 and head[4:8] in _MOV_BOXES:
        return "mov"  # mov,mp4,m4a,3gp,3g2,mj2
    if head[:4] == _EBML:
        return "matroska"  # matroska,webm
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def is_video_bytes(raw: bytes) -> bool:
    """Whether ``raw`` starts like a supported video container (MP4/MOV, Matroska/WebM, AVI). Cheap: the
    signature only, nothing is decoded, so a truncated or corrupt video still says ``True``."""
    return _demuxer(bytes(raw[:_SNIFF_BYTES])) is not None


def uniform_indices(total: int, n: int) -> list[int]:
    """``n`` frame numbers out of ``total``: the centres of ``n`` equal segments; every frame if
    ``total <= n``."""
    if total <= n:
        return list(range(total))
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


# --------------------------------------------------------------------------- sampling


def _source_name(source: str | Path | bytes) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ""
    return str(source).replace("\n", " ").replace("\r", " ") + ": "


def _reason(exc: BaseException) -> str:
    """A short reason for an FFmpeg/IO error: FFmpeg's own text without the errno and file name."""
    text = getattr(exc, "strerror", None)
    return str(text) if text else first_line(exc, 120)


def _ffmpeg_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, OSError, ValueError, EOFError, MemoryError)


@contextmanager
def _opened(source: str | Path | bytes, max_pixels: int) -> Iterator[tuple[Any, Any]]:
    """``(container, video stream)``, the container opened with the demuxer its signature names."""
    import av

    name = _source_name(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        file: Any = io.BytesIO(bytes(source))
    else:
        try:
            file = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise VideoError(f"{name}cannot read: {read_error(source, exc)}") from None
    with file:
        head = file.read(_SNIFF_BYTES)
        file.seek(0)
        if not head:
            raise VideoError(f"{name}empty file")
        demuxer = _demuxer(head)
        if demuxer is None:
            raise VideoError(f"{name}not a video in a supported container ({CONTAINER_NAMES})")
        try:
            container = av.open(file, mode="r", format=demuxer)
        except _ffmpeg_errors() as exc:
            raise VideoError(f"{name}cannot decode video: {_reason(exc)}") from None
        with container:
            stream = _video_stream(container, name, max_pixels)
            stream.codec_context.thread_type = "AUTO"  # frame and slice threads; pixels do not depend on them
            yield container, stream


def _video_stream(container: Any, name: str, max_pixels: int) -> Any:
    if not container.streams:  # e.g. an MP4 cut before its index (moov), which most cameras write last
        raise VideoError(f"{name}cannot decode video: no streams (an incomplete file?)")
    if not container.streams.video:
        raise VideoError(f"{name}no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
        raise VideoTooLarge(f"{name}too large: {width}x{height} pixels per frame exceeds the limit of {max_pixels}")
    return stream


@dataclass
class _Count:
    total: int = 0  # frames within the limits
    packets: int = 0  # packets demuxed, counted or not (bounds the decoding pass)
    limited: bool = False
    broken: bool = False  # demuxing failed, or the stream is shorter than its header says
    start: int | None = None  # pts of the stream's start, in stream.time_base


def _count_frames(container: Any, stream: Any, max_frames: int, max_seconds: float) -> _Count:
    """Count the frames by demuxing packets (no decoding), up to the limits."""
    count = _Count(start=stream.start_time)
    tb = stream.time_base
    limit_pts = None  # set from the first timestamp seen
    last_end = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            if packet.is_corrupt:  # cut short (a partial file) or damaged: the stream ends before it
                count.broken = True
                break
            if count.start is None and packet.pts is not None:
                count.start = packet.pts
            if limit_pts is None and count.start is not None and tb:
                limit_pts = count.start + max_seconds / tb
            dts = packet.dts if packet.dts is not None else packet.pts
            if limit_pts is not None and dts is not None and dts >= limit_pts:
                count.limited = True  # this and every later packet starts after max_seconds
                break
            if count.total >= max_frames:
                count.limited = True
                break
            count.packets += 1
            if packet.is_discard:
                continue  # decoded as a reference only (an edit list starts later): the decoder outputs no frame
            if limit_pts is not None and packet.pts is not None and packet.pts >= limit_pts:
                continue  # decoded before, shown after the limit (a reordered frame)
            count.total += 1
            if packet.pts is not None:
                end = packet.pts + (packet.duration or 0)
                last_end = end if last_end is None else max(last_end, end)
    except _ffmpeg_errors():
        count.broken = True
    if not count.limited and not count.broken:
        count.broken = _shorter_than_declared(container, stream, count, last_end)
    return count


def _shorter_than_declared(container: Any, stream: Any, count: _Count, last_end: int | None) -> bool:
    """Whether the container's header promises more frames or time than the packets hold (a cut file)."""
    if stream.frames and count.packets < stream.frames:
        return True  # MP4/MOV sample tables and AVI headers count the frames
    tb = stream.time_base
    if last_end is None or not tb or count.start is None:
        return False
    held = float((last_end - count.start) * tb)
    if stream.duration:
        declared = float(stream.duration * tb)
    elif container.duration and len(container.streams) == 1:
        declared = container.duration / 1_000_000  # Matroska: the segment's duration, in microseconds
    else:
        return False
    rate = stream.average_rate or stream.guessed_rate
    period = float(1 / rate) if rate else 0.1
    return declared - held > 2 * period + 0.05


def _upright(rgb: np.ndarray, rotation: float | None) -> np.ndarray:
    """The frame as it is shown: turned by its display matrix's rotation (counterclockwise, in degrees), as
    phones record upright videos. Quarter turns only; flips and other angles are ignored."""
    turns = round((rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _decode(container: Any, stream: Any, wanted: list[int], count: _Count) -> tuple[SampledFrames, int, bool]:
    """Decode sequentially; convert the ``wanted`` frames. Returns (the frames, frames decoded, broken)."""
    out = SampledFrames()
    if not wanted:
        return out, 0, False
    want = set(wanted)
    last = wanted[-1]
    tb = stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    stream_turn = (getattr(stream, "side_data", None) or {}).get("DISPLAYMATRIX", 0)  # PyAV < 13: no frame.rotation
    decoded = 0
    broken = False

    def take(frames: Any) -> bool:
        """Keep the wanted ones; True when the last wanted frame is in."""
        nonlocal decoded
        for frame in frames:
            index = decoded
            decoded += 1
            if index in want:
                out.frames.append(_upright(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", stream_turn)))
                out.indices.append(index)
                if frame.pts is not None and tb and count.start is not None:
                    out.timestamps.append(float((frame.pts - count.start) * tb))
                else:
                    out.timestamps.append(index / float(rate) if rate else float(index))
            if index >= last:
                return True
        return False

    packets = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                break  # end of stream; drained below
            packets += 1
            if packets > count.packets or packet.is_corrupt:  # never past the part counted; drained below
                break
            if take(stream.decode(packet)):
                return out, decoded, False
    except _ffmpeg_errors():
        broken = True
    try:
        take(stream.decode(None))  # drain the frames the decoder still holds
    except _ffmpeg_errors():
        broken = True
    return out, decoded, broken


def sample_frames(source: str | Path | bytes, cfg: VideoConfig, n: int | None = None,
                  *, max_pixels: int = DEFAULT_MAX_PIXELS) -> SampledFrames:
    """``n`` frames (default ``cfg.frames``) sampled uniformly from a video file or its bytes.

    The frames considered are the whole video, or its first ``cfg.max_frames`` frames and
    ``cfg.max_seconds`` seconds (``limited=True``). Frame ``int((i + 0.5) * total / n)`` is taken for
    ``i = 0..n-1`` (the centre of each of ``n`` equal segments); a video with fewer frames gives all of
    them. A cut or corrupt video gives what decodes before the damage (``truncated=True``). The same
    input always gives the same frames.

    Raises :class:`VideoError` for anything that is not a video in a supported container, cannot be
    opened, has no video stream or no decodable frame.
    """
    n = cfg.frames if n is None else n
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    name = _source_name(source)
    with _opened(source, max_pixels) as (container, stream):
        count = _count_frames(container, stream, cfg.max_frames, cfg.max_seconds)
    if count.total == 0:
        raise VideoError(f"{name}no decodable frames")
    total = count.total
    wanted = uniform_indices(total, n)
    with _opened(source, max_pixels) as (container, stream):
        result, decoded, broken = _decode(container, stream, wanted, count)
    if len(result.indices) < len(wanted):
        # Decoding ended (broken or missing data) before the last wanted frame: sample again from the
        # frames that do decode. Decoding is deterministic, so the second pass gets that far again.
        count.broken = True
        if decoded > 0:
            total = decoded
            with _opened(source, max_pixels) as (container, stream):
                result, _, _ = _decode(container, stream, uniform_indices(total, n), count)
    elif broken:
        count.broken = True  # the damage came after the last wanted frame
    if not result.frames:
        raise VideoError(f"{name}no decodable frames")
    result.total_frames = total
    result.limited = count.limited
    result.truncated = count.broken
    return result


def check_video(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the video file cannot be used, or ``None`` if it can: a supported container that opens, a
    video stream, and a first frame that decodes (as :func:`sample_frames` would decode it). Cheap: it
    stops at the first frame, however long the video."""
    try:
        with _opened(path, max_pixels) as (container, stream):
            first, _, _ = _decode(container, stream, [0], _Count(packets=_CHECK_PACKETS, start=stream.start_time))
    except VideoError as exc:
        return str(exc).removeprefix(_source_name(path))
    return None if first.frames else "no decodable frames"


_CHECK_PACKETS = 1000  # check_video: a first frame within the first packets, or the file is refused


# --------------------------------------------------------------------------- writing

# Per extension: the codec and its options. Every codec here is in PyAV's wheels (libx264, libvpx and
# FFmpeg's own mpeg4). High quality (low quantisers), so fine pixel traces survive the compression.
_H264 = ("libx264", {"crf": "8", "preset": "medium"})
_MPEG4 = ("mpeg4", {"flags": "+qscale+bitexact", "global_quality": str(2 * 118)})  # -q:v 2
_VP8 = ("libvpx", {"crf": "4", "qmin": "0", "qmax": "10"})
_CODECS = {".mp4": _H264, ".m4v": _H264, ".mov": _H264, ".mkv": _H264, ".webm": _VP8, ".avi": _MPEG4}
_CODEC_OPTIONS = dict(_CODECS.values())


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int | Fraction = 10,
                codec: str | None = None) -> None:
    """Write uint8 ``(H, W, 3)`` RGB frames (all one size, even sides) as a video; the container by the
    extension (:data:`VIDEO_EXTENSIONS`).

    The codec by default: H.264 (libx264) in MP4, M4V, MOV and MKV (MPEG-4 part 2 if the FFmpeg build
    lacks libx264), VP8 in WebM, MPEG-4 part 2 in AVI; all at high quality, 4:2:0 chroma. The output is
    deterministic: one encoder thread, no version strings or random ids (FFmpeg's ``bitexact``); the
    same frames and the same PyAV build write the same bytes.
    """
    import av

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CODECS:
        raise ValueError(f"unsupported video extension {suffix!r}; use one of {', '.join(VIDEO_EXTENSIONS)}")
    if not len(frames):
        raise ValueError("no frames to write")
    shape = np.shape(frames[0])
    if len(shape) != 3 or shape[2] != 3 or shape[0] % 2 or shape[1] % 2:
        raise ValueError(f"frames must be (H, W, 3) RGB with even H and W, got {shape}")
    if codec is None:
        codec = _CODECS[suffix][0]
        if codec not in av.codecs_available:
            codec = _MPEG4[0]
    options = dict(_CODEC_OPTIONS.get(codec, {}))
    height, width = shape[:2]
    rate = Fraction(fps)
    container_options = {"fflags": "+bitexact"}
    if suffix in (".mp4", ".m4v", ".mov"):
        container_options["movflags"] = "+faststart"  # the index first: a cut file still opens
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        with av.open(str(tmp), mode="w", format=_MUXERS[suffix], container_options=container_options) as out:
            stream = out.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1  # x264's and libvpx's output depends on the thread count
            if codec == "libvpx":
                stream.bit_rate = int(8 * width * height * rate)  # a ceiling; qmax bounds the quality
            stream.options = options
            for i, array in enumerate(frames):
                array = np.ascontiguousarray(array, dtype=np.uint8)
                if array.shape != shape:
                    raise ValueError(f"frame {i} is {array.shape}, frame 0 is {shape}: all frames must be one size")
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
