"""Several datasets trained on at once (``--data A --data B``, :mod:`deepfake.mixing`): epoch shares, per-dataset
metrics and threshold report, lineage, and ``crossval --by dataset``."""

import csv
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deepfake import data as D
from deepfake import mixing
from deepfake.cli import main
from deepfake.cli.app import data_folders
from deepfake.errors import DeepfakeError
from deepfake.features import epoch_indices
from deepfake.input_pipeline import make_dataset
from tests.helpers import TINY_ARGS, tiny_config


def _solid(folder: Path, n: int, value: int) -> list[str]:
    """``n`` 32 px PNGs of one grey ``value`` (so a decoded image tells which group it came from)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{value}_{i}.png"
        Image.new("RGB", (32, 32), (value, value, value)).save(path)
        paths.append(str(path))
    return paths


def _joined(tmp_path: Path, sizes: dict[str, tuple[int, int]]) -> tuple[D.Split, dict[tuple[str, int], int]]:
    """A joined training split of solid images: per dataset (reals, fakes); and the grey value of each group."""
    paths, labels, names, values = [], [], [], {}
    for k, (name, counts) in enumerate(sizes.items()):
        for label, n in enumerate(counts):
            value = 20 + 40 * (2 * k + label)
            values[(name, label)] = value
            found = _solid(tmp_path / name / str(label), n, value)
            paths += found
            labels += [label] * n
            names += [name] * n
    return D.Split(paths, labels, [], names), values


def test_epoch_counts_give_each_dataset_its_share_and_keep_its_class_balance():
    split = D.Split([f"a{i}" for i in range(30)] + [f"b{i}" for i in range(10)],
                    [0] * 20 + [1] * 10 + [0] * 5 + [1] * 5, [], ["a"] * 30 + ["b"] * 10)
    equal = D.epoch_counts(split, {"a": 0.5, "b": 0.5})
    assert sum(equal.values()) == len(split)
    assert equal[("a", 0)] + equal[("a", 1)] == 20 and equal[("b", 0)] + equal[("b", 1)] == 20
    assert equal[("a", 0)] == pytest.approx(2 * equal[("a", 1)], abs=1)  # a's 2:1 classes kept
    assert equal[("b", 0)] == equal[("b", 1)] == 10  # b repeats its 10 pictures to fill its half
    weighted = D.epoch_counts(split, {"a": 3.0, "b": 1.0})  # shares are normalised
    assert weighted[("b", 0)] + weighted[("b", 1)] == 10
    info = D.DatasetInfo("a + b", "split", ["real", "fake"], {"train": split}, shares={"a": 0.5, "b": 0.5})
    reals = equal[("a", 0)] + equal[("b", 0)]
    assert Counter(info.epoch_labels()) == {0: reals, 1: len(split) - reals}
    # class weights come from the epoch, not the joined split (where reals are 25 of 40)
    assert info.class_weights()[0] == pytest.approx(len(split) / (2 * reals))


def test_a_mixed_training_epoch_holds_each_dataset_its_share(tmp_path):
    split, values = _joined(tmp_path, {"big": (15, 15), "small": (3, 3)})
    cfg = tiny_config("data.augment.flip=false", "data.cache=memory").data
    ds = make_dataset(split, cfg, training=True, seed=3, mix={"big": 0.5, "small": 0.5})
    epochs = []
    for _ in range(2):
        seen = Counter()
        order = []
        for images, labels in ds:
            for image, label in zip(images.numpy(), labels.numpy(), strict=True):
                group = next(key for key, v in values.items() if abs(image.mean() - v) < 1)
                assert group[1] == int(label)  # every picture keeps its label
                seen[group] += 1
                order.append(group)
        epochs.append(order)
        assert sum(seen.values()) == len(split) == 36
        assert seen[("big", 0)] + seen[("big", 1)] == 18 and seen[("small", 0)] + seen[("small", 1)] == 18
        assert seen[("small", 0)] == seen[("small", 1)] == 9  # the small set's 6 pictures repeated
    assert epochs[0] != epochs[1]  # reshuffled every epoch, same composition
    again = [next(key for key, v in values.items() if abs(img.mean() - v) < 1)
             for images, _ in make_dataset(split, cfg, training=True, seed=3, mix={"big": 0.5, "small": 0.5})
             for img in images.numpy()]
    assert again == epochs[0]  # seeded: a run repeats exactly
    # the same epochs for a head trained on cached features
    keep = epoch_indices(split, {"big": 0.5, "small": 0.5}, seed=0)
    assert Counter(split.datasets[i] for i in keep) == {"big": 18, "small": 18}


def test_per_dataset_metrics_use_the_one_threshold(tmp_path):
    split = D.Split(["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"], [0, 0, 1, 1, 0, 0, 1, 1], [],
                    ["a"] * 4 + ["b"] * 4)
    probs = np.array([0.1, 0.2, 0.8, 0.9, 0.6, 0.7, 0.65, 0.9])
    found = mixing.per_dataset_metrics(split, probs, threshold=0.5)
    assert found["a"]["roc_auc"] == 1.0 and found["a"]["accuracy"] == 1.0
    assert found["b"]["roc_auc"] == 0.75 and found["b"]["accuracy"] == 0.5  # b's reals are above 0.5
    assert found["b"]["n"] == 4
    assert mixing.per_dataset_metrics(D.Split(["x"], [0]), np.array([0.3]), 0.5) == {}  # one dataset: none
    rows = mixing.metric_rows({"test": found})
    assert [(r["split"], r["dataset"], r["n"]) for r in rows] == [("test", "a", 4), ("test", "b", 4)]


def test_several_data_options_and_mix_resolve_and_are_checked(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert data_folders((str(a), str(b))) == [str(a), str(b)]
    assert data_folders(f"{a}:{b}") == [str(a), str(b)]  # one MLproject parameter
    cfg = tiny_config(f"data.path={a}", f"data.extra_paths=[{b}]", "data.mix=2,1")
    assert cfg.data.dataset_paths() == [str(a), str(b)] and cfg.data.mix == [2.0, 1.0]
    with pytest.raises(DeepfakeError, match="data.mix.*3 share.*2 dataset"):
        tiny_config(f"data.path={a}", f"data.extra_paths=[{b}]", "data.mix=1,1,1")
    with pytest.raises(DeepfakeError, match="data.mix"):
        tiny_config(f"data.path={a}", f"data.extra_paths=[{b}]", "data.mix=0,0")
    assert mixing.dataset_names([str(a), str(tmp_path / "x" / "a")]) == ["a", "a-2"]


def test_crossval_by_dataset_needs_several_datasets(tiny_split_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["crossval", "--data", str(tiny_split_dataset), "--by", "dataset", *TINY_ARGS])
    assert result.exit_code == 2
    assert "--by dataset: give two or more --data folders" in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Two tiny split demo datasets of different sizes (12 and 6 images per class)."""
    from deepfake.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("two")
    make_demo_dataset(root / "first", per_class=12, size=32, seed=7)
    make_demo_dataset(root / "second", per_class=6, size=32, seed=8)
    return root / "first", root / "second"


def test_leave_out_trains_on_the_other_datasets_and_tests_on_the_held_out_test_split(two_datasets):
    first, second = two_datasets
    cfg = tiny_config(f"data.path={first}", f"data.extra_paths=[{second}]")
    info = mixing.scan(cfg.data, lambda data_cfg, name: D.scan_dataset(data_cfg))
    assert list(info.parts) == ["first", "second"] and info.shares == {"first": 0.5, "second": 0.5}
    assert set(info.splits["train"].datasets) == {"first", "second"}
    fold, held_test, in_domain = mixing.leave_out(info, "second")
    for name in ("train", "val"):
        assert set(fold.splits[name].datasets) == {"first"}
        assert fold.splits[name].paths == info.parts["first"].splits[name].paths
    assert fold.splits["test"].paths == held_test.paths == info.parts["second"].splits["test"].paths
    assert in_domain.paths == info.parts["first"].splits["test"].paths
    with pytest.raises(DeepfakeError, match="no such dataset"):
        mixing.leave_out(info, "third")


# Known defect, found on the floor versions and not yet understood: with MLflow 3.0.0 and SQLAlchemy 1.4.23 this run
# ends in an IntegrityError ("Query-invoked autoflush") after the per-dataset table is printed; MLflow 3.17 passes.
@pytest.mark.xfail(mlflow.__version__.startswith("3.0."), reason="MLflow 3.0: IntegrityError at the end of a "
                   "two-dataset run (known defect, see the issue-21 closing note)", strict=False)
def test_train_on_two_datasets_logs_each_and_scores_each_at_one_threshold(two_datasets, tmp_path, monkeypatch):
    first, second = two_datasets
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(main, [
        "train", "--data", str(first), "--data", str(second), "--mix", "2,1", *TINY_ARGS,
        "--set", "train.feature_cache=true", "--set", "data.content_check=false", "--epochs", "1",
        "--fine-tune-epochs", "0", "--tracking-uri", uri, "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "2 datasets trained on together" in result.output
    assert "Per dataset (accuracy at the threshold" in result.output
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    params, metrics = run.data.params, run.data.metrics
    assert float(params["dataset.first.share"]) == pytest.approx(2 / 3, abs=1e-4)
    assert params["dataset.second.root"] == str(second)
    for split in ("val", "test"):
        for name in ("first", "second"):
            assert 0 <= metrics[f"{split}.{name}.roc_auc"] <= 1
    assert metrics["dataset.second.train.real"] == 4  # each dataset's own summary
    inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {"first-train", "first-val", "first-test", "second-train", "second-test"} <= inputs
    with (tmp_path / "out" / "evaluation" / "per_dataset.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["split"], r["dataset"]) for r in rows] == [
        ("val", "first"), ("val", "second"), ("test", "first"), ("test", "second")]
    threshold = run.data.metrics["threshold"]
    assert f"{threshold:.3f}" in result.output.split("Per dataset")[1].splitlines()[0]


@pytest.mark.slow
def test_crossval_by_dataset_runs_a_fold_per_dataset(two_datasets, tmp_path, monkeypatch):
    first, second = two_datasets
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(main, [
        "crossval", "--data", str(first), "--data", str(second), "--by", "dataset", *TINY_ARGS,
        "--set", "train.feature_cache=true", "--set", "data.content_check=false", "--epochs", "1",
        "--fine-tune-epochs", "0", "--tracking-uri", uri, "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "Leave-one-dataset-out" in result.output
    with (tmp_path / "out" / "crossval-dataset" / "crossval.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["held_out"] for r in rows] == ["first", "second", "mean"]
    second_test = D.scan_dataset(tiny_config(f"data.path={second}").data).splits["test"]
    assert int(rows[1]["n_fake"]) + int(rows[1]["n_real"]) == len(second_test)  # second's test split, whole
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert {r.data.tags.get("crossval.held_out") for r in runs} >= {"first", "second"}
