"""Metrics against hand-computed cases, and the files an evaluation writes."""

import json

import numpy as np
import pytest

from deepfake import evaluation as E
from deepfake import metrics as MET
from deepfake import plots

# 4 real (0), 4 fake (1). At threshold 0.5: predictions 0,0,1,0 | 1,1,0,1
Y = [0, 0, 0, 0, 1, 1, 1, 1]
P = [0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7]


def test_threshold_metrics_by_hand():
    m = MET.compute_metrics(Y, P, threshold=0.5)
    # tn=3 (0.1,0.2,0.3), fp=1 (0.6), fn=1 (0.4), tp=3
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (3, 1, 1, 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(3 / 4)
    # AUC: of 16 (fake, real) pairs only (0.4 vs 0.6) is mis-ordered -> 15/16
    assert m["roc_auc"] == pytest.approx(15 / 16)
    assert m["n"] == 8 and m["n_positive"] == 4


def test_confusion_orientation():
    cm = MET.confusion([0, 0, 1], [0.9, 0.1, 0.2], 0.5)
    # rows true, columns predicted: [[tn, fp], [fn, tp]]
    np.testing.assert_array_equal(cm, [[1, 1], [1, 0]])


def test_auc_three_by_three_with_one_inversion():
    # positives 0.9, 0.8, 0.4; negatives 0.5, 0.3, 0.2: only (0.4, 0.5) inverted -> 8/9
    m = MET.compute_metrics([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.4, 0.5, 0.3, 0.2])
    assert m["roc_auc"] == pytest.approx(8 / 9)


def test_eer_separable_and_symmetric():
    assert MET.equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == pytest.approx(0.0)
    # 2 real, 2 fake, one of each on the wrong side.
    # scores: real 0.1, 0.7; fake 0.3, 0.9. Threshold in (0.3, 0.7]: FPR=1/2, FNR=1/2 -> EER 0.5
    eer, t = MET.equal_error_rate([0, 0, 1, 1], [0.1, 0.7, 0.3, 0.9])
    assert eer == pytest.approx(0.5)
    assert 0.3 <= t <= 0.7
    # Y/P above: FPR = FNR = 1/4 at thresholds in (0.4, 0.6]
    assert MET.equal_error_rate(Y, P)[0] == pytest.approx(0.25)


def test_choose_threshold_separates_a_separable_set():
    y = [0, 0, 0, 1, 1, 1]
    p = [0.05, 0.1, 0.2, 0.3, 0.35, 0.4]
    for method in ("youden", "eer", "f1"):
        t = MET.choose_threshold(y, p, method)
        assert MET.compute_metrics(y, p, t)["accuracy"] == 1.0, method
    with pytest.raises(ValueError):
        MET.choose_threshold(y, p, "nope")


def test_one_class_gives_nan_not_an_exception():
    m = MET.compute_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert np.isnan(m["roc_auc"]) and np.isnan(m["average_precision"]) and np.isnan(m["eer"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert MET.choose_threshold([1, 1], [0.2, 0.3]) == 0.5


def test_expected_calibration_error_by_hand():
    # bin [0.2,0.3): probs 0.25,0.25 with 1 of 2 fake -> |0.5-0.25| = 0.25, weight 1/2
    # bin [0.8,0.9): probs 0.85,0.85 with 2 of 2 fake -> |1-0.85| = 0.15, weight 1/2
    ece = MET.expected_calibration_error([0, 1, 1, 1], [0.25, 0.25, 0.85, 0.85], n_bins=10)
    assert ece == pytest.approx(0.5 * 0.25 + 0.5 * 0.15)
    assert MET.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_classification_report_per_class():
    text, report = MET.classification_report(Y, P, 0.5, ["real", "fake"])
    assert "real" in text and "fake" in text
    assert report["fake"]["precision"] == pytest.approx(0.75)
    assert report["real"]["support"] == 4


def test_evaluate_predictions_writes_every_file(tmp_path):
    out = E.evaluate_predictions(Y, P, tmp_path, class_names=("real", "fake"), threshold=0.65, prefix="test")
    names = {p.split("/")[-1] for p in out["files"]}
    assert names == {
        "test_metrics.json", "test_confusion_matrix.json", "test_confusion_matrix.png",
        "test_classification_report.txt",
        "test_classification_report.json", "test_roc_curve.png", "test_pr_curve.png", "test_reliability.png",
    }
    saved = json.loads((tmp_path / "test_metrics.json").read_text())
    # At 0.65: predictions 0,0,0,0 | 1,1,0,1 -> accuracy 7/8; at 0.5 it is 6/8.
    assert saved["at_threshold"]["accuracy"] == pytest.approx(7 / 8) == out["metrics"]["accuracy"]
    assert saved["at_0.5"]["accuracy"] == pytest.approx(6 / 8) == out["metrics_at_0.5"]["accuracy"]
    cm = json.loads((tmp_path / "test_confusion_matrix.json").read_text())
    assert cm["matrix"] == [[4, 0], [1, 3]]
    for name in names:
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "test_roc_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_format_metrics_table():
    table = MET.format_metrics_table({"roc_auc": 0.93751, "n": 8.0, "accuracy": 0.75}, title="Test")
    assert "roc_auc" in table and "0.9375" in table and "Test" in table


def test_plots_write_pngs(tmp_path):
    img = np.random.default_rng(0).uniform(0, 255, (16, 16, 3))
    paths = [
        plots.plot_history({"loss": [1, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.6], "auc": [0.5, 0.7, 0.8],
                            "val_auc": [0.5, 0.6, 0.7]}, tmp_path / "h.png", phase_boundary=2),
        plots.plot_sample(img, "real", "fake", 0.8, tmp_path / "s.png", title="x.jpg"),
        plots.plot_sample_grid([{"image": img, "true_label": "real", "predicted_label": "real",
                                 "fake_probability": 0.1, "name": "a"}] * 3, tmp_path / "g.png"),
        plots.plot_metric_curves([{"damage": "none", "roc_auc": 0.9}, {"damage": "jpeg75", "roc_auc": 0.8}],
                                 "damage", ["roc_auc"], tmp_path / "c.png"),
        plots.plot_bar(["a", "b"], [0.3, 0.9], tmp_path / "b.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:4] == b"\x89PNG"


NAMES = [
    ("gen-a", "gen-a"), ("stylegan2.1_ffhq", "stylegan2.1_ffhq"), ("Ünïcödé", "Ünïcödé"),  # kept as they are
    ("a b/c:d\\e", "a_b_c_d_e"), ("x\ny", "x_y"),  # no spaces, slashes or other characters
    ("..", "__"), (".", "_"), ("", "_"),  # never a folder's parent, itself or nothing
]


@pytest.mark.parametrize("text, name", NAMES)
def test_safe_name_fits_a_folder(text, name, tmp_path):
    assert MET.safe_name(text) == name
    assert MET.safe_name(name) == name  # a safe name stays as it is
    folder = tmp_path / MET.safe_name(text)
    folder.mkdir()
    assert folder.parent == tmp_path and folder.name == name


def test_safe_names_are_metric_names_mlflow_accepts(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run() as run:
        for text, _ in NAMES:
            mlflow.log_metric(f"held_out.{MET.safe_name(text)}.roc_auc", 0.5)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert set(logged) == {f"held_out.{name}.roc_auc" for _, name in NAMES}
