"""Faces and video (issue 14): what decoding and face detection cost on this CPU, and what face crops change.

Part 1, speed (``results/faces_speed.md``): a 10 s 1280x720 30 fps H.264 clip (a real DFDC face crop, scaled
up to ~300 px, drifting over a slowly panning real photograph; written with :func:`deepfake.video.write_video`
into the work folder), then, each repeated ``--repeats`` times (medians reported):

- full decode of the clip to RGB (PyAV, the product's threading), frames/s;
- ``sample_frames`` of 8 frames (its packet-counting pass included), seconds per video;
- ``detect_faces_batch`` on those 8 frames, frames/s;
- the whole ``pictures_of(bytes, FaceConfig(enabled=True), VideoConfig(frames=8))``, seconds per video;
- face detection on 224x224 face crops (DFDC test split), one ``detect_faces`` call per image against one
  ``detect_faces_batch`` call for all, images/s.

Part 2, face crops (``results/faces_crops.md``): "wide frames" built from ``dfdc-faces-dev`` (2,000 DFDC face
crops, 224 px, real vs face-swapped, split by source video): each crop pasted at a random scale (25-40 % of
the frame width) and position into a 640x360 real photograph (``ai-vs-real/*/real``, resized to cover and
cropped; drawn at random for both classes alike), saved as JPEG q95, keeping the dataset's split and labels
(seeded: the same files every time). Then `deepfake train` (EfficientNet-Lite0, ImageNet weights, 224 px,
10 head epochs on cached features, no fine-tuning), each in its own process with its own MLflow store, feature
and media caches:

- (a) the original 224 px crops (reference), (b) the wide frames, whole frame resized, (c) the wide frames with
  ``--faces``; (d) one mp4 per source video (split, label, video) of its wide frames, each crop shown for 4
  frames with a drift of a few pixels per frame, 8 fps, trained with ``--faces --frames 8`` (``--video-frames``;
  per-frame and per-video test metrics); (e) the wide frames with ``--faces --face-margin 0`` (the DFDC crops are
  tight, so the default margin of 0.3 puts the pasted face at about 60 % of the crop's side).

Derived data and every run live under ``--work`` (never in the repository: the DFDC crops are third-party
data). A run whose ``result.json`` exists in its folder is not run again (delete the folder to redo it), nor
is part 1 once ``WORK/speed/speed.json`` exists (delete it to measure again), so the parts can be run at
different times; the tables say when and under which load each was measured.

    python benchmarks/bench_faces.py --work /root/hD/run [--dfdc PATH] [--backgrounds PATH]
                                     [--skip-training] [--skip-speed] [--runs a,b,c,d,e] [--repeats 5]
                                     [--video-frames 8]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, run_deepfake, write

DEFAULT_DFDC = DEFAULT_DATA.parent / "dfdc-faces-dev"
WIDE = (640, 360)  # width, height of the wide frames
FACE_FRACTION = (0.25, 0.40)  # the face crop's side as a fraction of the frame width
SEED = 14
VIDEO_FPS = 8
FRAMES_PER_CROP = 4
MAX_DRIFT = 4  # pixels per frame, each axis
TRAIN_ARGS = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--epochs", "10",
              "--fine-tune-epochs", "0", "--image-size", "224"]


def load() -> float:
    return round(os.getloadavg()[0], 1)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- pictures


def read_rgb(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def cover(rgb: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` resized (bicubic) to cover ``width`` x ``height`` and cropped there at a random offset."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    big = np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))
    x = int(rng.integers(0, size[0] - width + 1))
    y = int(rng.integers(0, size[1] - height + 1))
    return big[y:y + height, x:x + width]


def paste(background: np.ndarray, face: np.ndarray, side: int, x: int, y: int) -> np.ndarray:
    """A copy of ``background`` with ``face`` resized to ``side`` x ``side`` at ``(x, y)``, clipped to the frame."""
    from PIL import Image

    out = background.copy()
    h, w = out.shape[:2]
    scaled = np.asarray(Image.fromarray(face).resize((side, side), Image.BICUBIC))
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, w), min(y + side, h)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = scaled[y0 - y:y1 - y, x0 - x:x1 - x]
    return out


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def backgrounds_of(folder: Path) -> list[Path]:
    """The real photographs used as backgrounds: ``folder/*/real/*`` (or every image in ``folder``), sorted."""
    found = sorted(p for p in folder.glob("*/real/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not found:
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not found:
        raise SystemExit(f"no background images in {folder}")
    return found


def metadata(dfdc: Path) -> list[dict]:
    with open(dfdc / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- part 1: speed


def speed_clip(path: Path, dfdc: Path, backgrounds: list[Path], seconds: int = 10, fps: int = 30) -> dict:
    """Write the 1280x720 test clip: a face crop drifting over a panning photograph. Returns what it holds."""
    from deepfake.video import write_video

    rows = [r for r in metadata(dfdc) if r["split"] == "test" and r["label"] == "real"]
    face = read_rgb(dfdc / rows[0]["path"])
    rng = np.random.default_rng(SEED)
    wide = cover(read_rgb(backgrounds[0]), 1280 + 240, 720, rng)  # 240 px to pan across
    n = seconds * fps
    frames = []
    boxes = []
    for i in range(n):
        t = i / max(n - 1, 1)
        bg = wide[:, int(240 * t):int(240 * t) + 1280]
        side = int(300 + 30 * np.sin(2 * np.pi * t))
        x = int(200 + 600 * t)
        y = int(200 + 80 * np.sin(4 * np.pi * t))
        frames.append(paste(bg, face, side, x, y))
        boxes.append((x, y, side))
    if not path.exists():
        write_video(path, frames, fps)
    return {"path": str(path), "frames": n, "fps": fps, "size": "1280x720", "bytes": path.stat().st_size,
            "face": rows[0]["path"], "face_px": "270-330"}


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Run ``fn`` once to warm up, then ``repeats`` times: (seconds of each timed run, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def decode_all(path: Path) -> int:
    """Decode every frame of a video to RGB arrays as the product opens it (PyAV, frame/slice threads)."""
    import av

    n = 0
    with open(path, "rb") as f, av.open(f, mode="r", format="mov") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def speed(work: Path, dfdc: Path, backgrounds: list[Path], repeats: int) -> list[dict]:
    from deepfake.config import FaceConfig, VideoConfig
    from deepfake.faces import detect_faces, detect_faces_batch
    from deepfake.media import pictures_of
    from deepfake.video import sample_frames

    work.mkdir(parents=True, exist_ok=True)
    if (work / "speed.json").exists():  # measured before: delete it to measure again
        return json.loads((work / "speed.json").read_text())["rows"]
    clip = speed_clip(work / "clip_1280x720_30fps_10s.mp4", dfdc, backgrounds)
    path = Path(clip["path"])
    raw = path.read_bytes()
    started = now()
    faces = FaceConfig(enabled=True)
    video = VideoConfig(frames=8)
    rows: list[dict] = []

    def row(what: str, times: list[float], items: int, unit: str, found: str = "", load_before: float = 0.0) -> None:
        med = statistics.median(times)
        rows.append({"measurement": what, "median_s": round(med, 4), "min_s": round(min(times), 4),
                     "per_s": round(items / med, 2), "unit": unit, "frames_per_s": "", "repeats": len(times),
                     "faces_found": found, "load_1min": f"{load_before:.1f}-{load():.1f}"})
        print(rows[-1], flush=True)

    before = load()
    times, n = timed(lambda: decode_all(path), repeats)
    row(f"full decode to RGB, {clip['frames']} frames 1280x720", times, int(n), "frames/s", load_before=before)

    before = load()
    times, sampled = timed(lambda: sample_frames(path, video), repeats)
    row("sample_frames, 8 of 300 frames (incl. counting pass), per video", times, 1, "videos/s",
        load_before=before)

    frames = list(sampled.frames)
    before = load()
    times, found = timed(lambda: detect_faces_batch(frames, faces), repeats)
    row("detect_faces_batch, the 8 sampled 1280x720 frames", times, len(frames), "frames/s",
        f"{sum(bool(f) for f in found)}/{len(frames)}", before)

    before = load()
    times, media = timed(lambda: pictures_of(raw, faces, video), repeats)
    row("pictures_of(mp4 bytes, faces on, 8 frames), per video", times, 1, "videos/s",
        f"{len(media.pictures)} crops from {media.sampled} frames", before)
    rows[-1]["frames_per_s"] = round(media.sampled / rows[-1]["median_s"], 2)

    crops = [read_rgb(dfdc / r["path"]) for r in metadata(dfdc) if r["split"] == "test"][:64]
    before = load()
    times, found = timed(lambda: [detect_faces(c, faces) for c in crops], repeats)
    row(f"detect_faces one by one, {len(crops)} crops 224x224", times, len(crops), "images/s",
        f"{sum(bool(f) for f in found)}/{len(crops)}", before)
    before = load()
    times, found = timed(lambda: detect_faces_batch(crops, faces), repeats)
    row(f"detect_faces_batch, the same {len(crops)} crops in one call", times, len(crops), "images/s",
        f"{sum(bool(f) for f in found)}/{len(crops)}", before)
    (work / "speed.json").write_text(json.dumps({"clip": clip, "rows": rows, "measured": f"{started} to {now()}"},
                                                indent=2))
    return rows


# --------------------------------------------------------------------------- part 2: the data


def placements(rows: list[dict], n_backgrounds: int) -> list[dict]:
    """Where each crop goes, seeded per row: background, its crop offset seed, face side and position, drift."""
    out = []
    for i, _ in enumerate(rows):
        rng = np.random.default_rng([SEED, i])
        side = int(round(rng.uniform(*FACE_FRACTION) * WIDE[0]))
        out.append({"background": int(rng.integers(n_backgrounds)), "bg_seed": int(rng.integers(2**31)),
                    "side": side, "x": int(rng.integers(0, WIDE[0] - side + 1)),
                    "y": int(rng.integers(0, WIDE[1] - side + 1)),
                    "drift": [int(v) for v in rng.integers(-MAX_DRIFT, MAX_DRIFT + 1, size=2)]})
    return out


def build_wide(dfdc: Path, backgrounds: list[Path], out: Path, videos: bool) -> dict:
    """The wide-frame dataset (and, with ``videos``, its mp4 version) under ``out``; skipped when built."""
    from deepfake.video import write_video

    rows = metadata(dfdc)
    places = placements(rows, len(backgrounds))
    wide_dir, video_dir = out / "wide", out / "video"
    stamp = {"dfdc": str(dfdc), "backgrounds": len(backgrounds), "seed": SEED, "size": WIDE,
             "face_fraction": FACE_FRACTION, "rows": len(rows)}
    stamp = json.loads(json.dumps(stamp))  # as read back from built.json (lists, not tuples)
    done = out / "built.json"
    built = json.loads(done.read_text()) if done.exists() else {}
    if built.get("stamp") == stamp and (built.get("videos") or not videos):
        return built

    def frame_of(i: int, dx: int = 0, dy: int = 0) -> np.ndarray:
        p = places[i]
        bg = cover(read_rgb(backgrounds[p["background"]]), *WIDE, np.random.default_rng(p["bg_seed"]))
        return paste(bg, read_rgb(dfdc / rows[i]["path"]), p["side"], p["x"] + dx, p["y"] + dy)

    start = time.perf_counter()
    if built.get("stamp") != stamp:
        for i, r in enumerate(rows):
            target = wide_dir / r["split"] / r["label"] / Path(r["path"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(jpeg_bytes(frame_of(i), 95))
        (out / "placements.json").write_text(json.dumps(
            [{"path": str(wide_dir / r["split"] / r["label"] / Path(r["path"]).name), **p}
             for r, p in zip(rows, places, strict=True)]))
        built = {"stamp": stamp, "wide_seconds": round(time.perf_counter() - start, 1), "wide_images": len(rows)}
        done.write_text(json.dumps(built))
    if videos and not built.get("videos"):
        start = time.perf_counter()
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((r["split"], r["label"], r["video"]), []).append(i)
        for (split, label, name), members in groups.items():
            frames = []
            for i in members:
                dx, dy = places[i]["drift"]
                frames += [frame_of(i, k * dx, k * dy) for k in range(FRAMES_PER_CROP)]
            target = video_dir / split / label / f"{Path(name).stem}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            write_video(target, frames, VIDEO_FPS)
        built |= {"videos": len(groups), "video_seconds": round(time.perf_counter() - start, 1),
                  "video_frames": {str(k): len(v) * FRAMES_PER_CROP for k, v in list(groups.items())[:3]}}
        done.write_text(json.dumps(built))
    return built


# --------------------------------------------------------------------------- part 2: training


def metrics_of(path: Path) -> dict:
    if not path.exists():
        return {}
    return json.loads(path.read_text())["at_threshold"]


def skipped_by_reason(media_dir: Path) -> dict[str, int]:
    """Sources that gave no picture, by split and reason, from the media cache's manifests."""
    counts: dict[str, int] = {}
    for manifest in media_dir.glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m.get("error"):
            split = next((s for s in ("train", "val", "test") if f"/{s}/" in m["source"]), "?")
            key = f"{split}: {m['error']}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def train(work: Path, name: str, data: Path, extra: list[str]) -> dict:
    """One `deepfake train` in its own process and folder; its result is kept in ``work/name/result.json``."""
    folder = work / name
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    args = ["train", "--data", str(data), *TRAIN_ARGS, *extra, "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
            "--experiment", "bench-faces", "--output-dir", str(folder / "out"),
            "--set", f"train.feature_cache_dir={folder}/features", "--set", f"data.media_cache_dir={folder}/media"]
    before, started = load(), now()
    print(f"[{started}] {name}: deepfake {' '.join(args)}", flush=True)
    output, seconds, code, usage = run_deepfake(args, folder)
    (folder / "output.txt").write_text(output)
    result = {"name": name, "command": "deepfake " + " ".join(args), "exit": code, "seconds": round(seconds, 1),
              "cpu_s": round(usage.ru_utime + usage.ru_stime), "peak_rss_mb": round(usage.ru_maxrss / 1024),
              "load_before": before, "load_after": load(), "started": started}
    if code:
        result["error_tail"] = output[-4000:]
        print(output[-4000:], flush=True)
        return result  # not saved: the next invocation tries again
    evaluation = folder / "out" / "evaluation"
    skipped = re.search(r"skipped (\d+) (?:unreadable )?file", output)
    result |= {"test": metrics_of(evaluation / "test_metrics.json"),
               "test_video": metrics_of(evaluation / "test_video_metrics.json"),
               "n_skipped": int(skipped.group(1)) if skipped else 0,
               "skipped_by_reason": skipped_by_reason(folder / "media"),
               "notes": [line.strip() for line in output.splitlines() if line.strip().startswith("note:")],
               "dataset_report": output[output.find("Dataset "):].split("\n\n")[0][:3000]}
    result_file.write_text(json.dumps(result, indent=2, default=str))
    return result


def face_is_pasted_one(work: Path, wide_dir: Path, split: str = "test") -> dict:
    """How often the face the detector picks (largest) is the pasted crop: its box centre inside the pasted
    square. Shows whether faces in the background photographs compete with the pasted one."""
    from deepfake.config import FaceConfig
    from deepfake.faces import detect_faces_batch

    cache = work / f"pasted_check_{split}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    places = [p for p in json.loads((wide_dir.parent / "placements.json").read_text()) if f"/{split}/" in p["path"]]
    hits = none = other = 0
    cfg = FaceConfig(enabled=True)
    for start in range(0, len(places), 32):
        chunk = places[start:start + 32]
        found = detect_faces_batch([read_rgb(p["path"]) for p in chunk], cfg)
        for p, faces in zip(chunk, found, strict=True):
            if not faces:
                none += 1
                continue
            x0, y0, x1, y1 = faces[0].box  # deepfake.faces.Face: x0, y0, x1, y1 in the image's pixels
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            inside = p["x"] <= cx <= p["x"] + p["side"] and p["y"] <= cy <= p["y"] + p["side"]
            hits += inside
            other += not inside
    out = {"split": split, "images": len(places), "pasted_face": hits, "other_face": other, "no_face": none}
    cache.write_text(json.dumps(out))
    return out


def crops_table(runs: dict[str, dict], extra: dict, video_frames: int) -> None:
    if "d" in runs:  # the --frames that run (d) was trained with
        video_frames = int(re.search(r"--frames (\d+)", runs["d"]["command"]).group(1))
    labels = {"a": "(a) original 224 px face crops", "b": "(b) wide frames 640x360, whole frame resized",
              "c": "(c) wide frames, --faces",
              "d": f"(d) mp4 per source video (wide frames), --faces --frames {video_frames}",
              "e": "(e) wide frames, --faces --face-margin 0"}
    rows = []
    for key, r in runs.items():
        t, v = r.get("test", {}), r.get("test_video", {})
        no_face = sum(n for k, n in r.get("skipped_by_reason", {}).items() if "no face" in k)
        rows.append({"run": labels[key], "test_roc_auc": round(t.get("roc_auc", float("nan")), 4),
                     "test_ap": round(t.get("average_precision", float("nan")), 4),
                     "test_accuracy": round(t.get("accuracy", float("nan")), 4), "test_n": t.get("n", ""),
                     "video_roc_auc": round(v["roc_auc"], 4) if v else "-",
                     "video_ap": round(v["average_precision"], 4) if v else "-",
                     "video_n": v.get("n", "-") if v else "-",
                     "skipped_no_face": no_face if key in ("c", "d", "e") else "-",
                     "wall_s": r.get("seconds"), "cpu_s": r.get("cpu_s"), "peak_rss_mb": r.get("peak_rss_mb"),
                     "load_1min": f"{r.get('load_before')}-{r.get('load_after')}",
                     "measured": (r.get("started") or "")[:16], "exit": r.get("exit")})
    check = extra.get("pasted_check")
    spans = {k: (dt.datetime.fromisoformat(r["started"]).timestamp(), r["seconds"]) for k, r in runs.items()
             if r.get("started")}
    overlaps = sorted({f"({min(a, b)}) and ({max(a, b)})" for a, (sa, da) in spans.items()  # 2 s for rounding
                       for b, (sb, db) in spans.items() if a != b and sa < sb + db - 2 and sb < sa + da - 2})
    write("faces_crops", rows, extra={"runs": runs, **extra}, notes=(
        "`deepfake train` with `" + " ".join(TRAIN_ARGS) + "` (a head on the frozen ImageNet EfficientNet-Lite0, "
        "trained on cached features; default seed 42), each run in its own process, folder, MLflow store, feature "
        "and media caches (so (c), (d) and (e) include finding the faces once, and every run computes its features). "
        "Data: dfdc-faces-dev (2,000 DFDC face crops, 224 px, real vs face-swapped, split 70/15/15 by source "
        "video); wide frames: each crop pasted at 25-40 % of the width (160-256 px) at a random position into a "
        "640x360 real photograph from ai-vs-real/*/real (random for both classes), JPEG q95, same split and "
        "labels; (d): one mp4 per (split, label, source video), each crop shown 4 frames with a drift of up to "
        f"{MAX_DRIFT} px per frame, {VIDEO_FPS} fps, {video_frames} of its frames sampled uniformly (all when it has "
        f"fewer). Test metrics at the threshold "
        "chosen on validation (ROC-AUC and AP do not depend on it); video_*: per source video (mean of its "
        "frames' probabilities). skipped_no_face: sources (all splits) with no face found, which --faces skips. "
        "wall_s: the whole command (scan, leakage check, audit, faces, features, training, evaluation, MLflow "
        "logging); cpu_s: its user+system CPU seconds. load_1min: the 1-minute load average before and after on "
        "2 cores (above 2: other jobs shared them, contended)."
        + (f" Largest face found in the {check['images']} test wide frames: the pasted crop in "
           f"{check['pasted_face']}, a face of the background photograph in {check['other_face']}, none in "
           f"{check['no_face']}." if check else "")
        + (f" Runs that overlapped in time (sharing the cores with each other): {', '.join(overlaps)}."
           if overlaps else "")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="scratch folder for the clip, the built data and the runs")
    parser.add_argument("--dfdc", default=str(DEFAULT_DFDC))
    parser.add_argument("--backgrounds", default=str(DEFAULT_DATA), help="folder with */real/* photographs")
    parser.add_argument("--skip-training", action="store_true", help="part 1 only")
    parser.add_argument("--skip-speed", action="store_true", help="part 2 only")
    parser.add_argument("--runs", default="a,b,c,d,e",
                        help="training runs of part 2 (d: the mp4 version; e: face crops without margin)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--video-frames", type=int, default=8, help="--frames of run (d)")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    repo = Path(__file__).resolve().parents[1]
    if work == repo or repo in work.parents:
        raise SystemExit("--work must be outside the repository (the DFDC crops are third-party data)")
    dfdc, backgrounds = Path(args.dfdc), backgrounds_of(Path(args.backgrounds))
    work.mkdir(parents=True, exist_ok=True)

    if not args.skip_speed:
        rows = speed(work / "speed", dfdc, backgrounds, args.repeats)
        measured = json.loads((work / "speed" / "speed.json").read_text())
        clip = measured["clip"]
        write("faces_speed", rows, extra={"clip": clip, "measured": measured.get("measured")}, notes=(
            f"Measured {measured.get('measured')} (UTC). "
            f"Clip: {clip['frames']} frames, {clip['size']}, {clip['fps']} fps, H.264 (write_video, "
            f"{clip['bytes'] / 1e6:.1f} MB): a real DFDC face crop scaled to {clip['face_px']} px drifting over a "
            "panning real photograph. Detection: MTCNN with the default FaceConfig (detect_max_side 640: frames "
            "are downscaled for detection, crops cut from full resolution). Each measurement once to warm up, then "
            "timed `repeats` times in this one process; median_s per call (the whole clip, one video, or all the "
            "images), per_s = items / median. pictures_of: frames_per_s = sampled frames / median. load_1min: "
            "1-minute load average before and after each measurement on 2 cores (above 2: other jobs shared the "
            "cores, contended)."))
    if args.skip_training:
        return
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    built = build_wide(dfdc, backgrounds, work / "data", videos="d" in wanted)
    print("data:", built, flush=True)
    plan = {"a": (dfdc, []), "b": (work / "data" / "wide", []), "c": (work / "data" / "wide", ["--faces"]),
            "d": (work / "data" / "video", ["--faces", "--frames", str(args.video_frames)]),
            "e": (work / "data" / "wide", ["--faces", "--face-margin", "0"])}
    for key in wanted:
        train(work / "runs", key, *plan[key])
    runs = {k: json.loads((work / "runs" / k / "result.json").read_text())
            for k in "abcde" if (work / "runs" / k / "result.json").exists()}
    extra: dict = {"data": built}
    if "c" in runs:
        try:
            extra["pasted_check"] = face_is_pasted_one(work, work / "data" / "wide")
        except Exception as exc:  # noqa: BLE001 - a side figure; the table stands without it
            extra["pasted_check_error"] = repr(exc)
    crops_table(runs, extra, args.video_frames)


if __name__ == "__main__":
    main()
