"""Face crops and videos through the whole product: datasets (cached pictures, splits and the leakage check per
video), inference (one row per video, error rows, limits), evaluation per video and the pyfunc."""

import base64
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake import config as C
from deepfake import data as D
from deepfake import evaluation as E
from deepfake import leakage
from deepfake.inference import Predictor
from deepfake.media import encode_png, expand_files, pictures_of
from deepfake.video import write_video
from tests.helpers import TINY_ARGS, copy_detector

FRAMES = 4


def _face(seed: int, size: int = 96) -> np.ndarray:
    from deepfake.demo import draw_face

    return draw_face(np.random.default_rng(seed), size)


def _noise(seed: int, size: int = 64) -> np.ndarray:
    """A picture with no face in it."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR))


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _video(path: Path, seed: int, n: int = 12, face: bool = False, size: int = 64) -> Path:
    """A short video: a face drifting over a background (``face``), else moving noise; each frame also differs
    in brightness so that frames can be told apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        frame = _noise(seed * 100 + i, size).astype(int)
        if face:
            f = _face(seed, size // 2 + 8)
            x = 4 + i % 4
            frame[8 : 8 + f.shape[0], x : x + f.shape[1]] = f
        frames.append(np.clip(frame + int(rng.integers(-10, 10)), 0, 255).astype(np.uint8))
    write_video(path, frames, fps=8)
    return path


def _data_cfg(root: Path, tmp_path: Path, **faces) -> C.DataConfig:
    cfg = C.DataConfig(path=str(root), image_size=32, media_cache_dir=str(tmp_path / "media"))
    cfg.video.frames = FRAMES
    if faces:
        cfg.faces = C.FaceConfig(**faces)
    return cfg


# --------------------------------------------------------------------------- datasets


def test_face_crops_skip_images_without_a_face_and_are_cached(tmp_path, monkeypatch):
    root = tmp_path / "faces"
    for cls, offset in (("real", 0), ("fake", 50)):
        for i in range(7):
            _save(_face(offset + i), root / cls / f"{cls}{i}.png")
        _save(_noise(offset), root / cls / "noface.png")
    cfg = _data_cfg(root, tmp_path, enabled=True)
    cfg.val_fraction = cfg.test_fraction = 0.25
    info = D.scan_dataset(cfg, seed=0)
    assert sorted(Path(s.path).name for s in info.skipped) == ["noface.png", "noface.png"]
    assert all(s.reason == "no face found" for s in info.skipped)
    pictures = [p for split in info.splits.values() for p in split.paths]
    assert len(pictures) == 14 and all(Path(p).is_relative_to(tmp_path / "media") for p in pictures)
    groups = [g for split in info.splits.values() for g in split.group_ids()]
    assert sorted(Path(g).name for g in groups) == sorted(f"{c}{i}.png" for c in ("real", "fake") for i in range(7))
    crop = np.asarray(Image.open(pictures[0]))
    assert crop.shape[0] == crop.shape[1] and crop.shape[0] < 96 + 40  # a square crop, not the whole image

    def no_detection(*args, **kwargs):
        raise AssertionError("faces detected again although they are cached")

    monkeypatch.setattr("deepfake.faces.detect_faces_batch", no_detection)
    again = D.scan_dataset(cfg, seed=0)
    assert [s.paths for s in again.splits.values()] == [s.paths for s in info.splits.values()]
    cfg.faces.margin = 0.1  # another setting: another crop, detected anew
    with pytest.raises(AssertionError, match="detected again"):
        D.scan_dataset(cfg, seed=0)


def test_video_dataset_gives_frames_grouped_and_split_per_video(tmp_path):
    root = tmp_path / "videos"
    for label, cls in enumerate(("real", "fake")):
        for i in range(8):
            _video(root / cls / f"{cls}{i}.mp4", seed=label * 10 + i)
        _save(_noise(label + 100), root / cls / f"{cls}_still.png")  # images and videos mixed
    cfg = _data_cfg(root, tmp_path)
    info = D.scan_dataset(cfg, seed=3)
    owner: dict[str, str] = {}
    for name, split in info.splits.items():
        for path, group in zip(split.paths, split.group_ids(), strict=True):
            assert owner.setdefault(group, name) == name, f"{group} in two splits"
            if group.endswith(".png"):
                assert path == group  # an image without face crops is read as it is
            else:
                assert Path(path).suffix == ".png" and Path(path).is_relative_to(tmp_path / "media")
    counts = {g: sum(1 for s in info.splits.values() for x in s.group_ids() if x == g) for g in owner}
    assert {c for g, c in counts.items() if g.endswith(".mp4")} == {FRAMES}
    assert len(owner) == 18 and any("16 video(s)" in n or "video(s): 4 frames" in n for n in info.notes)


def test_leakage_check_names_videos_and_dedupe_removes_every_frame(tmp_path):
    root = tmp_path / "leaky"
    for s, split in enumerate(("train", "val", "test")):
        for c, cls in enumerate(("real", "fake")):
            for i in range(2):
                _video(root / split / cls / f"{split}{i}.mp4", seed=100 * s + 10 * c + i)
    copy = root / "test" / "real" / "copy.mp4"
    copy.write_bytes((root / "train" / "real" / "train0.mp4").read_bytes())
    cfg = _data_cfg(root, tmp_path)
    info = D.scan_dataset(cfg)
    leaks = leakage.find_leaks(info)
    assert [(Path(k.kept_path).name, Path(k.dup_path).name) for k in leaks] == [("train0.mp4", "copy.mp4")]
    before = len(info.splits["test"])
    info = leakage.dedupe(info, leaks)
    assert len(info.splits["test"]) == before - FRAMES
    assert str(copy) not in info.splits["test"].group_ids()


# --------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def detector(untrained_detector, tmp_path_factory):
    """The untrained tiny detector (32 px) twice, at threshold 0.1: one on whole frames, one on face crops."""
    # a random ResNet50 (a random EfficientNet-Lite answers 0.5 to everything: tests must see differences)
    video = asdict(C.VideoConfig(frames=FRAMES))
    return {name: copy_detector(untrained_detector, tmp_path_factory.mktemp(name), threshold=0.1, faces=asdict(faces),
                                video=video)
            for name, faces in (("frames", C.FaceConfig()), ("faces", C.FaceConfig(enabled=True)))}


def test_a_video_is_one_row_scored_from_its_frames_as_in_training(tmp_path, detector):
    predictor = Predictor.from_dir(detector["frames"])
    path = _video(tmp_path / "clip.mp4", seed=5, n=20)
    [row] = predictor.predict_values([str(path)])
    assert row["error"] is None and row["frames"] == FRAMES and len(row["frame_probabilities"]) == FRAMES
    assert row["fake_probability"] == pytest.approx(np.mean(row["frame_probabilities"]), abs=1e-5)
    # the pictures training caches for this video give the same probabilities (identical pixels)
    cfg = _data_cfg(tmp_path, tmp_path)
    cached = expand_files([str(path)], [0], cfg)
    assert cached.groups == [str(path)] * FRAMES
    trained = predictor.predict_split(D.Split(cached.paths, cached.labels, cached.groups))
    np.testing.assert_allclose(trained, row["frame_probabilities"], atol=1e-5)
    predictor.video.aggregate = "max"
    [top] = predictor.predict_values([str(path)])
    assert top["fake_probability"] == pytest.approx(max(row["frame_probabilities"]), abs=1e-5)


def test_bad_long_and_truncated_videos(tmp_path, detector):
    predictor = Predictor.from_dir(detector["frames"])
    good = _video(tmp_path / "good.mp4", seed=1, n=40)
    raw = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(raw[: int(len(raw) * 0.6)])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8)
    whole, cut_row, junk_row = predictor.predict_values([str(good), str(cut), str(junk)])
    assert whole["error"] is None and whole["note"] is None
    assert cut_row["error"] is None and cut_row["frames"] >= 1 and "ended early" in cut_row["note"]
    assert junk_row["error"] and junk_row["fake_probability"] is None
    predictor.video.max_frames = 10  # a video longer than the limit: sampled within its first 10 frames
    [long_row] = predictor.predict_values([str(good)])
    assert long_row["error"] is None and "longer than the limit" in long_row["note"]
    assert long_row["frame_probabilities"] != whole["frame_probabilities"]
    predictor.video.max_bytes = len(raw) - 1
    [big] = predictor.predict_values([raw])
    assert "too large" in big["error"] and big["fake_probability"] is None


def test_face_model_crops_at_inference_and_answers_no_face_with_an_error(tmp_path, detector):
    predictor = Predictor.from_dir(detector["faces"])
    assert predictor.faces.enabled  # stored with the model
    face = _save(_face(3, 128), tmp_path / "face.png")
    empty = _save(_noise(3), tmp_path / "empty.png")
    no_face_video = _video(tmp_path / "noface.mp4", seed=2)
    with_face = _video(tmp_path / "face.mp4", seed=4, face=True, size=96)
    rows = predictor.predict_values([str(face), str(empty), str(no_face_video), str(with_face)])
    assert rows[0]["error"] is None and rows[0]["frames"] == 1
    assert rows[1]["error"] == "no face found" and rows[1]["fake_probability"] is None
    assert rows[2]["error"] == f"no face in any of the {FRAMES} sampled frames"
    assert rows[3]["error"] is None and rows[3]["frames"] == FRAMES
    # the face model scores the crop training would cache: the same network given that crop agrees
    crop = pictures_of(face.read_bytes(), predictor.faces, predictor.video).pictures[0]
    assert crop.shape[0] == crop.shape[1] < 128
    frames_model = Predictor.from_dir(detector["frames"])
    assert frames_model.predict_values([encode_png(crop)])[0]["fake_probability"] == pytest.approx(
        rows[0]["fake_probability"], abs=1e-5)


def test_served_model_takes_a_base64_video_and_never_a_path(tmp_path, detector):
    predictor = Predictor.from_dir(detector["frames"])
    predictor.paths = False  # as served
    path = _video(tmp_path / "clip.webm", seed=9)
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    out = predictor.predict_frame({"image": [b64, str(path)]})
    assert out.loc[0, "error"] == "" and out.loc[0, "frames"] == FRAMES
    assert len(out.loc[0, "frame_probabilities"]) == FRAMES
    assert out.loc[1, "error"] and str(path) not in out.loc[1, "error"]


def test_evaluation_reports_per_video_metrics(tmp_path, detector):
    root = tmp_path / "eval"
    for label, cls in enumerate(("real", "fake")):
        for i in range(3):
            _video(root / cls / f"{cls}{i}.avi", seed=label * 10 + i)
    predictor = Predictor.from_dir(detector["frames"])
    cfg = predictor.data_config(root)
    cfg.media_cache_dir = str(tmp_path / "media")
    info, split = D.scan_evaluation_dataset(cfg)
    result = E.evaluate_predictor(predictor, info, tmp_path / "out", split=split, echo=lambda s: None)
    assert len(result["probs"]) == 6 * FRAMES
    videos = result["per_video"]
    assert videos["n"] == 6 and len(videos["probs"]) == 6
    saved = json.loads((tmp_path / "out" / f"{split}_video_metrics.json").read_text())
    assert saved["at_threshold"]["roc_auc"] == pytest.approx(videos["metrics"]["roc_auc"])


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_demo_videos_train_on_faces_then_predict_evaluate_sample_and_serve(tmp_path, monkeypatch):
    """The command line end to end on the synthetic video demo: a detector trained on face crops of video frames
    answers a video with one row, evaluates per frame and per video, samples a video and loads as a pyfunc."""
    import mlflow
    import pandas as pd
    from click.testing import CliRunner

    from deepfake.cli import main

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    made = runner.invoke(main, ["demo-data", "videos", "--video", "--per-class", "10"])
    assert made.exit_code == 0, made.output
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trained = runner.invoke(main, [
        "train", "--data", "videos", "--faces", "--frames", "3", *TINY_ARGS,
        "--set", "train.feature_cache=true", "--epochs", "2", "--fine-tune-epochs", "0", "--tracking-uri", uri,
        "--output-dir", "out"])
    assert trained.exit_code == 0, trained.output
    assert "face crops" in trained.output and "per video" in trained.output
    meta = json.loads((tmp_path / "out" / "model" / "model.meta.json").read_text())
    assert meta["faces"]["enabled"] is True and meta["video"]["frames"] == 3
    clip = sorted((tmp_path / "videos" / "test" / "fake").glob("*.mp4"))[0]
    predicted = runner.invoke(main, ["predict", "--model", "out/model", str(clip), "--output", "rows.json"])
    assert predicted.exit_code == 0, predicted.output
    [row] = json.loads((tmp_path / "rows.json").read_text())
    assert row["frames"] == 3 and len(row["frame_probabilities"]) == 3 and not row["error"]
    evaluated = runner.invoke(main, ["evaluate", "--model", "out/model", "--data", "videos", "--tracking-uri", uri,
                                     "--output-dir", "eval"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "per video" in evaluated.output and (tmp_path / "eval" / "test_video_metrics.json").is_file()
    sampled = runner.invoke(main, ["sample", "--model", "out/model", "--data", "videos", "--seed", "1",
                                   "--out", "sample.png"])
    assert sampled.exit_code == 0 and ".mp4 (3 frames" in sampled.output, sampled.output
    explained = runner.invoke(main, ["explain", "--model", "out/model", str(clip), "--out", "cam.png"])
    assert explained.exit_code == 0 and "picture 2 of the 3" in explained.output, explained.output
    mlflow.set_tracking_uri(uri)
    run_id = mlflow.search_runs(experiment_names=["deepfake"]).run_id.iloc[-1]
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model", model_config={"allow_paths": False})
    out = served.predict(pd.DataFrame({"image": [base64.b64encode(clip.read_bytes()).decode("ascii")]}))
    assert out.loc[0, "error"] == "" and out.loc[0, "frames"] == 3
    assert out.loc[0, "fake_probability"] == pytest.approx(row["fake_probability"], abs=1e-5)
