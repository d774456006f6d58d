"""Detection quality: per-source tables, robustness sweep, calibration, leakage, HTML report, evaluate CLI."""

import csv
import io
import shutil

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deepfake import calibration, leakage
from deepfake import config as C
from deepfake import data as D
from deepfake import evaluation as E
from deepfake.cli import main
from deepfake.inference import Predictor
from tests.helpers import tiny_config


def test_perturbations_change_the_image_and_stay_decodable(tiny_split_dataset):
    raw = next((tiny_split_dataset / "test" / "real").glob("*.jpg")).read_bytes()
    original = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=float)
    for name in E.PERTURBATIONS:
        out = E.perturb(raw, name)
        img = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"), dtype=float)
        assert img.shape == original.shape
        diff = np.abs(img - original).mean()
        assert (diff == 0) == (name == "none"), name
    # Stronger damage is further from the original.
    d = {n: np.abs(np.asarray(Image.open(io.BytesIO(E.perturb(raw, n))).convert("RGB"), float) - original).mean()
         for n in ("jpeg_q95", "jpeg_q30", "blur_sigma1", "blur_sigma2")}
    assert d["jpeg_q30"] > d["jpeg_q95"] and d["blur_sigma2"] > d["blur_sigma1"]


def test_robustness_sweep_table_and_plot(untrained_detector, tiny_split_dataset, tmp_path):
    predictor = Predictor.from_dir(untrained_detector)
    split = D.scan_dataset(C.resolve(set_args=[f"data.path={tiny_split_dataset}"]).data).splits["test"]
    sweep = E.robustness_sweep(predictor, split, tmp_path, names=["none", "jpeg_q50", "blur_sigma2"])
    assert [r["perturbation"] for r in sweep["rows"]] == ["none", "jpeg_q50", "blur_sigma2"]
    assert all(r["n"] == len(split) and 0 <= r["accuracy"] <= 1 for r in sweep["rows"])
    assert (tmp_path / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list(csv.DictReader((tmp_path / "robustness.csv").open()))) == 3


def test_per_source_table_by_hand(tmp_path):
    paths = [str(tmp_path / f"{i}.jpg") for i in range(6)]
    for p in paths:
        open(p, "w").close()
    labels = [0, 0, 1, 1, 1, 1]
    probs = np.array([0.2, 0.7, 0.9, 0.8, 0.3, 0.1])
    kinds = ["web", "web", "sdxl", "sdxl", "dalle", "dalle"]
    sources = {str((tmp_path / f"{i}.jpg").resolve()): s for i, s in enumerate(kinds)}
    table = E.per_source_table(paths, labels, probs, 0.5, sources, tmp_path)
    rows = {r["source"]: r for r in table["rows"]}
    assert rows["web"]["accuracy"] == 0.5 and rows["web"]["flagged_fake"] == 0.5
    assert np.isnan(rows["web"]["roc_auc"])  # reals only: nothing to separate
    assert rows["sdxl"]["accuracy"] == 1.0 and rows["dalle"]["accuracy"] == 0.0  # dalle fools the model
    # A generator's fakes are scored against every real image: sdxl (0.9, 0.8) above both reals (0.2, 0.7),
    # dalle (0.3, 0.1) above one real once in four pairs.
    assert rows["sdxl"]["roc_auc"] == 1.0 and rows["dalle"]["roc_auc"] == 0.25


def test_read_metadata_resolves_relative_paths(tmp_path):
    (tmp_path / "data" / "test" / "fake").mkdir(parents=True)
    img = tmp_path / "data" / "test" / "fake" / "a.jpg"
    img.write_bytes(b"x")
    meta = tmp_path / "data" / "metadata.csv"
    meta.write_text("path,split,label,source\ntest/fake/a.jpg,test,fake,SDXL\n")
    assert E.read_metadata(meta, tmp_path / "data") == {str(img.resolve()): "SDXL"}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,kind\n")
    from deepfake.errors import DeepfakeError

    with pytest.raises(DeepfakeError, match="path"):
        E.read_metadata(bad, tmp_path)


def test_temperature_scaling_recovers_the_overconfidence_factor():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)  # labels drawn from sigmoid(z)
    overconfident = 1 / (1 + np.exp(-3 * z))  # a model whose logits are 3x too large
    t = calibration.fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    from deepfake.metrics import compute_metrics

    calibrated = calibration.apply_temperature(overconfident, t)
    assert compute_metrics(y, calibrated)["ece"] < compute_metrics(y, overconfident)["ece"]
    assert calibration.fit_temperature([1, 1], [0.2, 0.9]) == 1.0


def test_leakage_finds_exact_and_near_duplicates_and_dedupe_removes_later_copies(tiny_split_dataset, tmp_path):
    root = tmp_path / "leaky"
    shutil.copytree(tiny_split_dataset, root)
    train_img = sorted((root / "train" / "fake").glob("*.jpg"))[0]
    shutil.copy(train_img, root / "test" / "fake" / "exact_copy.jpg")
    with Image.open(train_img) as img:
        img.convert("RGB").save(root / "val" / "fake" / "near_copy.jpg", quality=60)  # re-encoded: near duplicate
    cfg = tiny_config(data=root)
    info = D.scan_dataset(cfg.data)
    leaks = leakage.find_leaks(info, max_distance=4)
    kinds = {(leak.kind, leak.dup_path.rsplit("/", 1)[-1]) for leak in leaks}
    assert ("exact", "exact_copy.jpg") in kinds and ("near", "near_copy.jpg") in kinds
    assert all(leak.kept_split == "train" for leak in leaks if "copy" in leak.dup_path)
    n_test = len(info.splits["test"])
    deduped = leakage.dedupe(info, leaks)
    assert len(deduped.splits["test"]) < n_test
    assert not any("copy" in p for s in ("val", "test") for p in deduped.splits[s].paths)
    assert str(train_img) in deduped.splits["train"].paths  # the train copy is kept
    assert "exact" in leakage.report(leaks)


def test_clean_dataset_has_no_leaks(tiny_split_dataset):
    info = D.scan_dataset(C.resolve(set_args=[f"data.path={tiny_split_dataset}"]).data)
    assert leakage.find_leaks(info, max_distance=0) == []


def test_evaluate_cli_takes_a_held_out_dataset_whole(untrained_detector, tiny_unsplit_dataset, tiny_split_dataset,
                                                     tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def evaluate(data, *extra):
        result = CliRunner().invoke(main, ["evaluate", "--model", str(untrained_detector), "--data", str(data),
                                           "--no-report", "--output-dir", str(tmp_path / "ev"),
                                           "--tracking-uri", uri, *extra])
        assert result.exit_code == 0, result.output
        mlflow.set_tracking_uri(uri)
        run = mlflow.search_runs(experiment_names=["deepfake-evaluation"], output_format="list",
                                 order_by=["attributes.start_time DESC"])[0]
        return result.output, run

    # An unsplit folder (real/, fake/; 40 images) is evaluated whole, and the output says so.
    output, run = evaluate(tiny_unsplit_dataset)
    assert f"Evaluating 40 images (20 real, 20 fake) of {tiny_unsplit_dataset}: every image\n" in output
    assert run.data.metrics["all_n"] == 40 and run.data.params["n_images"] == "40"
    # Just its test split (the 15 % training held out), on request.
    output, run = evaluate(tiny_unsplit_dataset, "--split", "test")
    assert "Evaluating 6 images (3 real, 3 fake)" in output and "its test split" in output
    assert run.data.metrics["test_n"] == 6
    # A folder holding only test/real and test/fake is evaluated, not refused as a wrong layout.
    only_test = tmp_path / "held_out"
    shutil.copytree(tiny_split_dataset / "test", only_test / "test")
    output, run = evaluate(only_test)
    assert "Evaluating 4 images (2 real, 2 fake)" in output and "every image of test/" in output
    assert run.data.metrics["test_n"] == 4
    # A bad --split for that folder: one line, exit 2.
    bad = CliRunner().invoke(main, ["evaluate", "--model", str(untrained_detector), "--data", str(only_test),
                                    "--split", "val", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "held_out/val is missing" in bad.output and "Traceback" not in bad.output


def test_evaluate_cli_with_metadata_robustness_and_report(untrained_detector, tiny_split_dataset, tmp_path,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = tmp_path / "metadata.csv"
    with meta.open("w") as f:
        f.write("path,source\n")
        for p in sorted((tiny_split_dataset / "test").rglob("*.jpg")):
            f.write(f"{p.relative_to(tiny_split_dataset)},{'camera' if '/real/' in str(p) else 'generator-x'}\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(main, [
        "evaluate", "--model", str(untrained_detector), "--data", str(tiny_split_dataset), "--metadata", str(meta),
        "--robustness", "--output-dir", str(tmp_path / "ev"), "--tracking-uri", uri,
    ])
    assert result.exit_code == 0, result.output
    assert "Per source" in result.output and "generator-x" in result.output
    assert "jpeg_q30" in result.output and "downscale_50" in result.output
    page = (tmp_path / "ev" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "per source" in page and "robustness" in page
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["deepfake-evaluation"], output_format="list")[0]
    assert run.data.tags["model_uri"] == str(untrained_detector)
    assert "test_roc_auc" in run.data.metrics and "robustness.jpeg_q30.roc_auc" in run.data.metrics
    assert "test_ece" in run.data.metrics
    # `deepfake report --run` writes the page for any run and logs it to that run.
    out = tmp_path / "r.html"
    rep = CliRunner().invoke(main, ["report", "--run", run.info.run_id, "--out", str(out), "--tracking-uri", uri])
    assert rep.exit_code == 0, rep.output
    assert "data:image/png;base64," in out.read_text()
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")}
    assert "report/r.html" in arts


def test_cross_dataset_rows_by_hand():
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    probs = [0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.25, 0.05]
    sources = ["camera"] * 4 + ["gan", "gan", "diffusion", "diffusion"]
    rows = E.cross_dataset_rows("set", labels, probs, 0.5, sources)
    by = {r["source"]: r for r in rows}
    assert [r["source"] for r in rows] == ["(all)", "camera", "diffusion", "gan"]
    assert by["(all)"]["n"] == 8 and by["(all)"]["n_fake"] == 4
    assert by["(all)"]["roc_auc"] == pytest.approx(0.5)  # 8 of 16 (fake, real) pairs ranked right
    assert by["(all)"]["accuracy"] == pytest.approx(5 / 8)
    # A generator's fakes are ranked against every real: gan beats 3 of 4 reals twice -> 6/8.
    assert by["gan"]["roc_auc"] == pytest.approx(0.75) and by["gan"]["accuracy"] == 1.0
    assert by["diffusion"]["roc_auc"] == pytest.approx(2 / 8) and by["diffusion"]["accuracy"] == 0.0
    assert np.isnan(by["camera"]["roc_auc"]) and by["camera"]["accuracy"] == pytest.approx(0.75)
    assert 0 < by["gan"]["average_precision"] <= 1
    assert E.cross_dataset_rows("set", labels, probs, 0.5) == rows[:1]  # no sources: the dataset's row only


def test_evaluate_cli_on_several_datasets_prints_one_table_and_logs_one_run(untrained_detector, tiny_split_dataset,
                                                                           tiny_unsplit_dataset, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(tiny_unsplit_dataset, other)
    with (other / "metadata.csv").open("w") as f:  # the dataset's own metadata: a per-source row for each source
        f.write("path,source\n")
        for i, p in enumerate(sorted(other.rglob("*.jpg"))):
            f.write(f"{p.relative_to(other)},{'camera' if '/real/' in str(p) else f'gan-{i % 2}'}\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(main, ["evaluate", "--model", str(untrained_detector),
                                       "--data", str(tiny_split_dataset), "--data", str(other),
                                       "--output-dir", str(tmp_path / "ev"),
                                       "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    table = result.output.split("Cross-dataset")[1].splitlines()
    assert table[1].split() == E.CROSS_COLUMNS
    rows = [line.split() for line in table[2:] if line.strip() and not line.startswith("MLflow")]
    assert [r[:2] for r in rows] == [[tiny_split_dataset.name, "(all)"], ["other", "(all)"], ["other", "camera"],
                                     ["other", "gan-0"], ["other", "gan-1"]]
    assert rows[0][2] == "4" and rows[1][2] == "40"  # the test split of a training set; the other whole
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["deepfake-evaluation"], output_format="list")
    assert run.data.tags["deepfake.role"] == "cross-evaluation"
    assert {"cross.other.roc_auc", "cross.other.camera.accuracy", f"cross.{tiny_split_dataset.name}.roc_auc",
            "dataset.other.all.real"} <= set(run.data.metrics)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/cross_dataset.csv", "evaluation/cross_dataset.png", "evaluation/other"} <= arts
    csv_rows = list(csv.DictReader((tmp_path / "ev" / "cross_dataset.csv").open()))
    assert len(csv_rows) == 5 and csv_rows[1]["n"] == "40"
    # --robustness is for one dataset: one line, exit 2.
    bad = CliRunner().invoke(main, ["evaluate", "--model", str(untrained_detector), "--data", str(other), "--data",
                                    str(other), "--robustness", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "--robustness takes one --data" in bad.output
