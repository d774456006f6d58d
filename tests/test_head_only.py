"""Head-only trials (frozen backbone, no fine-tuning, feature cache on) cost what their training costs: the head
is trained, validated and tested on cached features, the run logs the head and the backbone's fingerprint, and
the detector is assembled only for the study's best trial or a run that is registered."""

import csv

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from deepfake import checkpoints, evaluation, input_pipeline, pipeline, tracking, training
from deepfake import config as C
from deepfake import data as D
from deepfake import features as F
from deepfake import model as M
from deepfake.cli import main
from deepfake.inference import load_predictor
from tests.helpers import TINY_ARGS, tiny_config


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(F, "_FINGERPRINTS", {})  # as in a new process: no backbone fingerprinted yet
    return tmp_path


# A head-only trial of the tiny model: two head epochs from the feature cache, no fine-tuning.
HEAD_ONLY_SETS = ("train.feature_cache=true", "train.epochs=2", "train.fine_tune_epochs=0", "data.leakage_check=false",
                  "data.audit=false")


def head_cfg(root, store, name="trial", *sets):
    """The head-only trial ``name`` on dataset ``root``: features, outputs and MLflow store under ``store``."""
    return tiny_config(*HEAD_ONLY_SETS, f"train.feature_cache_dir={store / 'features'}",
                       f"tracking.tracking_uri=sqlite:///{store}/mlflow.db", "tracking.experiment=head-only", *sets,
                       data=root, out=store / name)


def logged_predictions(out_dir):
    """``{split: probabilities}`` as the head-only run wrote them (calibrated, in file order)."""
    probs: dict[str, list[float]] = {}
    with (out_dir / "evaluation" / pipeline.PREDICTIONS_FILE).open(newline="") as f:
        for row in csv.DictReader(f):
            probs.setdefault(row["split"], []).append(float(row["probability"]))
    return {k: np.array(v) for k, v in probs.items()}


def run_files(run_id, folder):
    return {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, folder)}


def test_head_only_is_phase_one_alone_from_the_cache():
    def cfg(*sets):
        return C.resolve(set_args=["train.fine_tune_epochs=0", *sets])

    assert pipeline.head_only(cfg())
    assert pipeline.head_only(cfg("train.fine_tune_epochs=3", "train.fine_tune_stages=0"))  # nothing to fine-tune
    assert not pipeline.head_only(cfg("train.fine_tune_epochs=3"))
    assert not pipeline.head_only(cfg("train.feature_cache=false"))
    assert not pipeline.head_only(cfg("train.epochs=0", "train.fine_tune_epochs=2"))


def test_evaluation_without_figures_keeps_the_metrics_and_reports(tmp_path):
    y, p = [0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.8, 0.9]
    lean = evaluation.evaluate_predictions(y, p, tmp_path / "lean", threshold=0.5, figures=False)
    full = evaluation.evaluate_predictions(y, p, tmp_path / "full", threshold=0.5)
    assert lean["metrics"] == full["metrics"]
    assert not list((tmp_path / "lean").glob("*.png"))
    assert {f.name for f in (tmp_path / "full").glob("*.png")} == {
        "test_confusion_matrix.png", "test_roc_curve.png", "test_pr_curve.png", "test_reliability.png"}
    assert {f.name for f in (tmp_path / "lean").iterdir()} == {
        f.name for f in (tmp_path / "full").iterdir() if f.suffix != ".png"}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["off", "bfloat16"])
def test_head_only_probabilities_are_the_assembled_detectors_on_pixels(tiny_split_dataset, store, precision):
    """Val and test probabilities from the head on cached features are what the detector assembled from the run
    gives on the images (the cached features are the float32 backbone's, whatever the training precision)."""
    cfg = head_cfg(tiny_split_dataset, store, "trial", f"train.mixed_precision={precision}")
    tracking.setup(cfg.tracking)
    result = pipeline.run(cfg, lean=True, verbose=0, echo=lambda s: None)
    assert result.head_only and result.model_uri is None
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags[pipeline.MODEL_TAG] == "head" and len(tags[pipeline.FINGERPRINT_TAG]) == 16
    assert run_files(result.run_id, pipeline.HEAD_DIR) == {"head/head.keras", "head/model.meta.json"}
    assert not [f for f in run_files(result.run_id, "evaluation") if f.endswith(".png")]  # no figures per trial
    assert "test_roc_auc" in mlflow.get_run(result.run_id).data.metrics

    probs = logged_predictions(result.out_dir)
    uri = pipeline.assemble(result.run_id, echo=lambda s: None)
    predictor = load_predictor(tracking.local_model(uri))
    info = D.scan_dataset(cfg.data)
    for split in ("val", "test"):
        np.testing.assert_allclose(predictor.predict_split(info.splits[split]), probs[split], atol=1e-5)
    assert predictor.meta.threshold == pytest.approx(result.threshold)
    # The assembled run is a complete one: its model, and the figures the trial skipped; assembled once.
    assert mlflow.get_run(result.run_id).data.tags[pipeline.MODEL_TAG] == "full"
    assert {"evaluation/test_confusion_matrix.png", "evaluation/val_roc_curve.png",
            "evaluation/training_curves.png"} <= run_files(result.run_id, "evaluation")
    assert pipeline.assemble(result.run_id) == tracking.run_model_uri(result.run_id)
    assert mlflow.get_run(result.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_head_only_trial_after_the_first_touches_no_pixels_and_builds_no_backbone(tiny_split_dataset, store,
                                                                                    monkeypatch):
    calls: list[str] = []

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((M, "build_backbone"), (F, "compute_features"), (input_pipeline, "make_dataset"),
                         (pipeline, "make_dataset"), (training, "predict_probabilities"), (training, "train")):
        counted(module, name)
    first = head_cfg(tiny_split_dataset, store, "trial_0")
    tracking.setup(first.tracking)
    pipeline.run(first, lean=True, verbose=0, echo=lambda s: None)
    # The first trial builds the backbone once and computes each split's features once, val and test included.
    assert sorted(calls) == ["build_backbone", "compute_features", "compute_features", "compute_features",
                             "make_dataset", "make_dataset", "make_dataset"]
    calls.clear()
    later = head_cfg(tiny_split_dataset, store, "trial_1", "model.head_units=[16]", "model.dropout=0.1")
    result = pipeline.run(later, lean=True, verbose=0, echo=lambda s: None)
    assert calls == []  # no backbone, no image decoded, no prediction from pixels, no detector trained
    assert result.head_only and 0 <= result.test_metrics["roc_auc"] <= 1
    assert not (result.out_dir / "checkpoints" / checkpoints.BEST_FILE).exists()  # no detector checkpoint either


# ----------------------------------------------------------------------------- a study


HEAD_ONLY = [*TINY_ARGS, *(arg for setting in HEAD_ONLY_SETS for arg in ("--set", setting))]


@pytest.mark.slow
def test_a_head_only_study_assembles_its_best_trial_and_registers_it(tiny_split_dataset, store):
    space = store / "space.yaml"
    space.write_text("params:\n"
                     "  model.dropout: {type: float, low: 0.0, high: 0.5}\n"
                     "  train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "sampler: {type: random}\npruner: {type: none}\n")
    uri = f"sqlite:///{store}/mlflow.db"
    args = ["tune", "--data", str(tiny_split_dataset), "--study-name", "h", "--storage", f"sqlite:///{store}/optuna.db",
            "--n-trials", "3", "--search-space", str(space), "--tracking-uri", uri, "--experiment", "head-study",
            *HEAD_ONLY]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "promoted to @champion" in result.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["head-study"], output_format="list")
    parent = next(r for r in runs if r.data.tags.get("deepfake.role") == "study")
    trials = {r.info.run_id: r for r in runs if "optuna.trial_number" in r.data.tags}
    best = parent.data.tags["best.mlflow_run_id"]
    assert len(trials) == 3 and all(r.data.tags["state"] == "COMPLETE" for r in trials.values())
    # Only the best trial got a detector and figures; every trial kept its metrics.
    experiment = parent.info.experiment_id
    assert {m.source_run_id for m in mlflow.search_logged_models([experiment], output_format="list")} == {best}
    for run_id, run in trials.items():
        assert {"val_final_roc_auc", "test_roc_auc", "val_auc"} <= set(run.data.metrics)
        assert run.data.tags[pipeline.MODEL_TAG] == ("full" if run_id == best else "head")
        pngs = {f for f in run_files(run_id, "evaluation") if f.endswith(".png")}
        assert bool(pngs) == (run_id == best)
    champion = mlflow.MlflowClient().get_model_version_by_alias("deepfake-detector", "champion")
    assert champion.run_id == best
    import pandas as pd

    images = sorted(str(p) for p in (tiny_split_dataset / "test").rglob("*.jpg"))
    out = mlflow.pyfunc.load_model("models:/deepfake-detector@champion").predict(pd.DataFrame({"image": images}))
    assert out["error"].eq("").all() and len(out) == len(images)

    # Another trial registered by hand gets its detector assembled then.
    other = next(run_id for run_id in trials if run_id != best)
    registered = CliRunner().invoke(main, ["register", "--run-id", other, "--data", str(tiny_split_dataset),
                                           "--tracking-uri", uri])
    assert registered.exit_code == 0, registered.output
    assert mlflow.get_run(other).data.tags[pipeline.MODEL_TAG] == "full"
    versions = mlflow.MlflowClient().search_model_versions("name = 'deepfake-detector'")
    assert sorted(v.run_id for v in versions) == sorted([best, other])
    # Running the study's command again assembles and registers nothing new.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "already registered for this run" in again.output and "Assembled" not in again.output
    assert len(mlflow.search_logged_models([experiment], output_format="list")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("lean", [True, False])
def test_a_run_scored_on_a_second_dataset_gives_what_the_detector_gives_there(tiny_split_dataset,
                                                                             tiny_unsplit_dataset, store, lean):
    """``run(also=...)`` (deepfake tune --also-data): the head-only run (cached features of the second dataset)
    and the full run (pixels) both score it as the saved detector does, and log it as also_* metrics."""
    cfg = head_cfg(tiny_split_dataset, store, f"also-{lean}", *(() if lean else ("train.feature_cache=false",)))
    tracking.setup(cfg.tracking)
    other = C.resolve(set_args=[f"data.path={tiny_unsplit_dataset}"]).data
    info, name = D.scan_evaluation_dataset(other, split="auto")
    also = info.splits[name]
    result = pipeline.run(cfg, lean=lean, verbose=0, echo=lambda s: None, also=also)
    assert result.head_only is lean
    metrics = mlflow.get_run(result.run_id).data.metrics
    assert metrics["also_n"] == len(also) == 40 and result.also_metrics["n"] == 40
    uri = pipeline.assemble(result.run_id, echo=lambda s: None) if lean else result.model_uri
    probs = load_predictor(tracking.local_model(uri)).predict_split(also)
    expected = evaluation.evaluate_predictions(also.labels, probs, store / "check", threshold=result.threshold,
                                               figures=False)["metrics"]
    assert result.also_metrics["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert metrics["also_roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert 0 < len(set(np.round(probs, 6))) and result.also_metrics["accuracy"] == pytest.approx(
        expected["accuracy"])
