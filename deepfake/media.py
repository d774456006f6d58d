"""Media files -> the pictures a detector sees: an image as it is, the faces in it, or frames of a video.

With face crops off, an image file is used as it is (:func:`deepfake.images.decode_image` reads the file). A
video gives ``data.video.frames`` frames sampled uniformly (:mod:`deepfake.video`). With ``data.faces.enabled``
every image and frame gives its largest face (or every face) cropped square with a margin
(:mod:`deepfake.faces`); one with no face gives no picture, and a source with no picture at all is skipped
(training) or answered with an error (prediction), never scored on the whole frame.

Training (:func:`expand_files`) writes each source's pictures once, as lossless PNG, into a folder of
``data.media_cache_dir`` keyed by the file (path, size, modification time) and every setting that changes its
pictures; a later epoch, trial or run reads them from there. Inference (:func:`pictures_of`) makes the same
pictures in memory and :func:`encode_png` gives the same PNG bytes, so training and inference decode identical
bytes. Each picture carries its source file as its *group* (a video's frames share one), for splits, the
leakage check and per-video metrics; :func:`aggregate` turns a group's frame probabilities into one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepfake.config import DataConfig, FaceConfig, VideoConfig
from deepfake.errors import TooLarge, first_line
from deepfake.images import DEFAULT_MAX_PIXELS, check_bytes, check_image, decode_with_pillow, input_error
from deepfake.video import (
    VIDEO_EXTENSIONS,
    VideoError,
    VideoTooLarge,
    check_video,
    is_video_bytes,
    sample_frames,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CHUNK = 32  # sources decoded and searched for faces together (the face detector runs same-size batches)


@dataclass
class Media:
    """What one source file or input gives: its pictures (uint8 RGB) and where they came from."""

    kind: str  # "image" or "video"
    pictures: list[np.ndarray] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # the frame each picture came from (0 for an image)
    sampled: int = 1  # frames sampled (a video) or 1 (an image)
    limited: bool = False  # a video longer than data.video.max_seconds/max_frames: only its first part was sampled
    truncated: bool = False  # a video whose decoding stopped early: the frames decoded before were used


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def needs_pictures(path: str | Path, cfg: DataConfig) -> bool:
    """Whether a source file becomes cached pictures (a video, or anything with face crops on) rather than being
    read as it is."""
    return cfg.faces.enabled or is_video_path(path)


def check_file(path: str | Path) -> str | None:
    """Why a dataset file (image or video) cannot be used, or ``None`` if it can."""
    return check_video(path) if is_video_path(path) else check_image(path)


def settings(cfg: DataConfig, video: bool) -> dict:
    """Every setting that changes the pictures of a source: of the face crops when on, of the frame sampling for a
    video."""
    out: dict = {"faces": None}
    if cfg.faces.enabled:
        from deepfake import faces

        out["faces"] = faces.settings(cfg.faces)
    if video:
        v = cfg.video
        out["video"] = {"frames": v.frames, "max_seconds": v.max_seconds, "max_frames": v.max_frames}
    return out


# --------------------------------------------------------------------------- pictures


def encode_png(picture: np.ndarray) -> bytes:
    """The lossless PNG bytes of a picture: what the cache stores and what inference decodes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _frames_of(raw: bytes, video: VideoConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Media:
    """An input's frames before any face crop: one for an image, the sampled ones for a video. Raises ValueError."""
    if is_video_bytes(raw):
        try:
            sampled = sample_frames(raw, video, max_pixels=max_pixels)
        except VideoTooLarge as exc:
            raise TooLarge(str(exc)) from None
        except VideoError as exc:
            raise ValueError(str(exc)) from None
        return Media("video", list(sampled.frames), list(sampled.indices), len(sampled.frames), sampled.limited,
                     sampled.truncated)
    problem = check_bytes(raw, max_pixels)
    if problem:
        raise input_error(problem)
    return Media("image", [decode_with_pillow(raw)], [0])


def _crop(media: Media, faces_found: Sequence[Sequence], cfg: FaceConfig) -> Media:
    """The faces of each frame (the largest, or every face) instead of the frames; ValueError when none has one."""
    from deepfake.faces import crop_face

    pictures, frames = [], []
    for frame, index, found in zip(media.pictures, media.frames, faces_found, strict=True):
        for face in found[: 1 if cfg.mode == "largest" else None]:
            pictures.append(crop_face(frame, face, cfg.margin))
            frames.append(index)
    if not pictures:
        raise ValueError("no face found" if media.kind == "image" else
                         f"no face in any of the {media.sampled} sampled frames")
    return Media(media.kind, pictures, frames, media.sampled, media.limited, media.truncated)


def pictures_of(raw: bytes, faces: FaceConfig, video: VideoConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Media:
    """The pictures of one input (encoded image or video bytes), as training made them; raises ValueError with a
    one-line reason (not an image or video, undecodable, no frames, no face)."""
    media = _frames_of(raw, video, max_pixels)
    if not faces.enabled:
        return media
    from deepfake.faces import detect_faces_batch

    return _crop(media, detect_faces_batch(media.pictures, faces), faces)


def aggregate(probabilities: Sequence[float], video: VideoConfig) -> float:
    """One probability from a video's (or an image's faces') frame probabilities: their mean, max or the mean of
    the ``top_k`` highest (``data.video.aggregate``)."""
    p = np.sort(np.asarray(probabilities, dtype="float64"))[::-1]
    if p.size == 0:
        raise ValueError("no frame probabilities to aggregate")
    if video.aggregate == "max":
        return float(p[0])
    if video.aggregate == "topk":
        return float(p[: video.top_k].mean())
    return float(p.mean())


# --------------------------------------------------------------------------- the training cache


def _cache_folder(path: str, cfg: DataConfig) -> Path:
    st = os.stat(path)
    key = json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns, settings(cfg, is_video_path(path))],
                     sort_keys=True)
    return Path(cfg.media_cache_dir) / hashlib.sha1(key.encode()).hexdigest()[:20]


def _store(folder: Path, source: str, media: Media | None, error: str | None) -> dict:
    """Write a source's pictures and manifest into ``folder`` atomically (a temporary sibling renamed into place;
    a concurrent worker that got there first wins and its folder is used)."""
    manifest = {"source": os.path.abspath(source), "error": error, "files": [], "frames": []}
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if media is not None:
        manifest |= {"kind": media.kind, "sampled": media.sampled, "limited": media.limited,
                     "truncated": media.truncated}
        for i, (picture, frame) in enumerate(zip(media.pictures, media.frames, strict=True)):
            name = f"{i:04d}.png"
            (tmp / name).write_bytes(encode_png(picture))
            manifest["files"].append(name)
            manifest["frames"].append(int(frame))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    try:
        tmp.rename(folder)
    except OSError:  # another process stored it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _load(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if all((folder / name).is_file() for name in manifest.get("files", [])):
        return manifest
    return None


def _compute(paths: Sequence[str], cfg: DataConfig) -> list[tuple[Media | None, str | None]]:
    """The pictures (or the reason there are none) of each source; faces searched in one batch per chunk."""
    frames: list[Media | None] = []
    errors: list[str | None] = []
    for path in paths:
        try:
            frames.append(_frames_of(Path(path).read_bytes(), cfg.video))
            errors.append(None)
        except (ValueError, OSError) as exc:
            frames.append(None)
            errors.append(first_line(exc, 160))
    if not cfg.faces.enabled:
        return list(zip(frames, errors, strict=True))
    from deepfake.faces import detect_faces_batch

    flat = [p for m in frames if m is not None for p in m.pictures]
    found = iter(detect_faces_batch(flat, cfg.faces)) if flat else iter(())
    out: list[tuple[Media | None, str | None]] = []
    for media, error in zip(frames, errors, strict=True):
        if media is None:
            out.append((None, error))
            continue
        mine = [next(found) for _ in media.pictures]
        try:
            out.append((_crop(media, mine, cfg.faces), None))
        except ValueError as exc:
            out.append((None, str(exc)))
    return out


def _chunks(items: list[tuple[str, Path]], cfg: DataConfig) -> list[list[tuple[str, Path]]]:
    """Sources in groups of about CHUNK frames (a video counts its sampled frames), so that memory stays bounded."""
    chunks: list[list[tuple[str, Path]]] = [[]]
    frames = 0
    for item in items:
        cost = cfg.video.frames if is_video_path(item[0]) else 1
        if chunks[-1] and frames + cost > CHUNK:
            chunks.append([])
            frames = 0
        chunks[-1].append(item)
        frames += cost
    return [c for c in chunks if c]


@dataclass
class Expanded:
    """A list of source files turned into the pictures training reads (:func:`expand_files`)."""

    paths: list[str]
    labels: list[int]
    groups: list[str]  # the source file of each picture
    skipped: list[tuple[str, str]]  # (source, why it gave no picture)
    notes: list[str]


def expand_files(paths: Sequence[str], labels: Sequence[int], cfg: DataConfig, progress: bool = False) -> Expanded:
    """Sources -> pictures, in order: an image file as it is (face crops off), else the cached PNG pictures of its
    faces or of a video's frames, made once per file and settings. Sources without a picture are skipped with
    their reason."""
    todo = [p for p in paths if needs_pictures(p, cfg)]
    manifests: dict[str, dict] = {}
    missing: list[tuple[str, Path]] = []
    for path in todo:
        folder = _cache_folder(path, cfg)
        manifest = _load(folder)
        if manifest is None:
            missing.append((path, folder))
        else:
            manifests[path] = manifest
    if missing:
        what = ("faces in" if cfg.faces.enabled else "frames of")
        log.info("finding %s %d file(s) once (cached in %s)", what, len(missing), cfg.media_cache_dir)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(missing), desc="faces" if cfg.faces.enabled else "video frames", unit="file",
                       leave=False)
        for chunk in _chunks(missing, cfg):
            for (path, folder), (media, error) in zip(chunk, _compute([p for p, _ in chunk], cfg), strict=True):
                manifests[path] = _store(folder, path, media, error)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
    out = Expanded([], [], [], [], [])
    videos = limited = truncated = 0
    for path, label in zip(paths, labels, strict=True):
        manifest = manifests.get(path)
        if manifest is None:
            out.paths.append(path)
            out.labels.append(int(label))
            out.groups.append(path)
            continue
        if manifest["error"]:
            out.skipped.append((path, manifest["error"]))
            continue
        folder = _cache_folder(path, cfg)
        videos += manifest.get("kind") == "video"
        limited += bool(manifest.get("limited"))
        truncated += bool(manifest.get("truncated"))
        for name in manifest["files"]:
            out.paths.append(str(folder / name))
            out.labels.append(int(label))
            out.groups.append(path)
    if videos:
        out.notes.append(f"{videos} video(s): {cfg.video.frames} frames sampled from each"
                         + (", face crops" if cfg.faces.enabled else ""))
    if cfg.faces.enabled:
        out.notes.append(f"face crops ({cfg.faces.mode} face, margin {cfg.faces.margin}): {len(out.paths)} "
                         f"picture(s) from {len(paths) - len(out.skipped)} file(s)")
    if limited:
        out.notes.append(f"{limited} video(s) longer than the limit ({cfg.video.max_seconds:g} s or "
                         f"{cfg.video.max_frames} frames): sampled within their first part")
    if truncated:
        out.notes.append(f"{truncated} video(s) ended early (truncated or corrupt): their decodable frames used")
    return out
