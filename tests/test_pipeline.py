"""deepfake.pipeline on its own: the dataset checks before training (what is printed, leakage, dedupe,
shortcut audit) and the evaluation of one split, on tiny data and a model without a backbone."""

import json
import logging
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from deepfake import pipeline
from deepfake.calibration import apply_temperature
from deepfake.images import load_image

# The tiny configuration in batches of 4, seeded 0.
PIPELINE = ("data.batch_size=4", "train.seed=0")


@pytest.fixture()
def leaky(tiny_split_dataset, tmp_path):
    """The tiny split dataset with one training image copied into the test split."""
    root = tmp_path / "leaky"
    shutil.copytree(tiny_split_dataset, root)
    original = sorted((root / "train" / "fake").glob("*.jpg"))[0]
    copy = root / "test" / "fake" / "copy_of_a_training_image.jpg"
    shutil.copy(original, copy)
    return {"root": root, "original": original, "copy": copy}


def run_prepare(cfg):
    lines: list[str] = []
    info = pipeline.prepare_dataset(cfg, echo=lines.append, progress=False)
    return info, "\n".join(lines)


def test_prepare_dataset_reports_a_duplicate_across_splits_and_keeps_it(leaky, tiny_cfg):
    info, printed = run_prepare(tiny_cfg(*PIPELINE, data=leaky["root"]))
    exact = [leak for leak in info.leaks if leak.kind == "exact"]
    assert [(leak.kept_path, leak.dup_path) for leak in exact] == [(str(leaky["original"]), str(leaky["copy"]))]
    assert "Leakage check:" in printed and "use --set data.dedupe=true to remove them" in printed
    assert str(leaky["copy"]) in info.splits["test"].paths  # reported, not removed
    assert f"Dataset {leaky['root']}" in printed  # then the dataset table


def test_prepare_dataset_dedupe_removes_the_copy_from_the_later_split(leaky, tiny_cfg):
    info, printed = run_prepare(tiny_cfg(*PIPELINE, "data.dedupe=true", data=leaky["root"]))
    assert "removed from the later split: data.dedupe" in printed
    assert str(leaky["copy"]) not in info.splits["test"].paths
    assert str(leaky["original"]) in info.splits["train"].paths  # the earlier split keeps its image
    assert any("dedupe: removed" in note for note in info.notes)


def test_prepare_dataset_audit_warns_of_a_shortcut(tiny_split_dataset, tmp_path, caplog, tiny_cfg):
    """Every fake a PNG, every real a JPEG: the file format alone tells the classes apart."""
    root = tmp_path / "shortcut"
    shutil.copytree(tiny_split_dataset, root)
    for jpg in root.glob("*/fake/*.jpg"):
        with Image.open(jpg) as img:
            img.save(jpg.with_suffix(".png"))
        jpg.unlink()
    with caplog.at_level(logging.WARNING, logger="deepfake.pipeline"):
        info, printed = run_prepare(tiny_cfg(*PIPELINE, data=root))
    assert "format" in info.audit.shortcuts
    assert "Dataset audit:" in printed and "WARNING: shortcut: " in printed
    assert any(r.message.startswith("shortcut: ") for r in caplog.records)  # also logged, for log files
    info, printed = run_prepare(tiny_cfg(*PIPELINE, "data.audit=false", "data.leakage_check=false", data=root))
    assert info.audit is None and info.leaks == []
    assert "Dataset audit:" not in printed and "Leakage check:" not in printed


def test_evaluate_split_predicts_in_file_order_calibrated_and_writes_the_evaluation(tiny_split_dataset, tmp_path,
                                                                                   tiny_cfg):
    """A model without a backbone whose output is known (sigmoid of the mean red value): the split's
    probabilities are those of its files in order, with the temperature applied."""
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.layers[-1].set_weights([np.array([[0.05], [0.0], [0.0]], dtype="float32"), np.array([-5.0], "float32")])
    cfg = tiny_cfg(*PIPELINE, data=tiny_split_dataset)
    info, _ = run_prepare(tiny_cfg(*PIPELINE, "data.audit=false", "data.leakage_check=false", data=tiny_split_dataset))
    split = info.splits["test"]
    result = pipeline.evaluate_split(model, split, cfg, tmp_path / "eval", threshold=0.5, prefix="test",
                                     temperature=2.0)
    red = np.array([load_image(p, 32)[..., 0].mean() for p in split.paths])
    expected = apply_temperature(1 / (1 + np.exp(-(0.05 * red - 5.0))), 2.0)
    np.testing.assert_allclose(result["probs"], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(result["probs"], expected[::-1])  # the order matters
    saved = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    assert saved["threshold"] == 0.5 and saved["at_threshold"]["roc_auc"] == pytest.approx(result["metrics"]["roc_auc"])
    matrix = json.loads((tmp_path / "eval" / "test_confusion_matrix.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) == len(split)


def test_the_mask_kinds_of_self_blended_fakes_are_logged_with_the_fallback_counted(tmp_path, tiny_cfg):
    import mlflow

    from deepfake import data as D

    paths = []
    for i in range(3):  # blank pictures: no face mesh, no MTCNN face -> the ellipse fallback
        paths.append(str(tmp_path / f"blank{i}.png"))
        Image.new("RGB", (64, 64), (120 + i, 120, 120)).save(paths[-1])
    train = D.Split(paths, [0, 0, 1])
    cfg = tiny_cfg(*PIPELINE, "data.synthetic_fakes.kind=sbi", "data.synthetic_fakes.mask=mesh",
                   f"data.media_cache_dir={tmp_path / 'cache'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run() as run:
        points = pipeline._mask_points(cfg, train)
    assert points.shape[:2] == (3, 468) and np.isnan(points).all()  # no mesh, no keypoints: ellipses
    params = mlflow.get_run(run.info.run_id).data.params
    assert (params["synthetic.masks.mesh"], params["synthetic.masks.ellipse"]) == ("0", "2")  # the two reals
    cfg.data.synthetic_fakes.kind = "resynth"
    assert pipeline._mask_points(cfg, train) is None  # no blending, no masks
