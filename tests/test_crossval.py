"""Leave-one-source-out cross-validation (``deepfake crossval``, :mod:`deepfake.crossval`)."""

import csv
import shutil

import mlflow
import pytest
from click.testing import CliRunner

from deepfake import atomic
from deepfake import config as C
from deepfake import crossval as CV
from deepfake import data as D
from deepfake import evaluation as E
from deepfake.cli import main
from tests.helpers import TINY_ARGS


@pytest.fixture()
def sourced(tiny_split_dataset, tmp_path):
    """The tiny split dataset with a metadata.csv giving its fakes two generators, alternating."""
    root = tmp_path / "sourced"
    shutil.copytree(tiny_split_dataset, root)
    with (root / "metadata.csv").open("w") as f:
        f.write("path,split,source\n")
        for i, p in enumerate(sorted(root.rglob("*.jpg"))):
            source = "camera" if p.parent.name == "real" else ("gen-a", "gen-b")[i % 2]
            f.write(f"{p.relative_to(root)},{p.parts[-3]},{source}\n")
    return root


def test_a_fold_trains_without_the_held_out_source_and_tests_all_of_it_against_the_test_reals(sourced):
    info = D.scan_dataset(C.resolve(set_args=[f"data.path={sourced}"]).data)
    sources = CV.source_of(info, E.read_metadata(sourced / "metadata.csv", sourced))
    assert CV.fake_sources(info, sources) == ["gen-a", "gen-b"]
    held_a = [p for s in info.splits.values() for p, y in zip(s.paths, s.labels, strict=True)
              if y and sources[p] == "gen-a"]
    fold = CV.fold(info, sources, "gen-a")
    for name in ("train", "val"):
        kept = fold.splits[name]
        assert not any(sources[p] == "gen-a" for p in kept.paths)
        assert kept.counts(["real", "fake"])["real"] == info.splits[name].counts(["real", "fake"])["real"]
        assert any(sources[p] == "gen-b" for p in kept.paths)
    test = fold.splits["test"]
    original = info.splits["test"]
    test_reals = [p for p, y in zip(original.paths, original.labels, strict=True) if y == 0]
    assert sorted(p for p, y in zip(test.paths, test.labels, strict=True) if y == 0) == sorted(test_reals)
    fakes = sorted(p for p, y in zip(test.paths, test.labels, strict=True) if y == 1)
    assert fakes == sorted(held_a)  # from every split
    assert len(held_a) > info.splits["test"].counts(["real", "fake"])["fake"] / 2
    in_domain = CV.in_domain_test(info, sources, "gen-a")
    assert {sources[p] for p, y in zip(in_domain.paths, in_domain.labels, strict=True) if y} == {"gen-b"}


def test_crossval_command_runs_a_nested_run_per_source_and_prints_the_table(sourced, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(main, [
        "crossval", "--data", str(sourced), "--by", "source", "--backbone", "efficientnet_lite0", *TINY_ARGS,
        "--set", "train.feature_cache=true", "--epochs", "1", "--fine-tune-epochs", "0", "--tracking-uri", uri,
        "--experiment", "cv", "--output-dir", str(tmp_path / "out"), "--set", "tracking.log_model=false"])
    assert result.exit_code == 0, result.output
    table = result.output.split("Leave-one-source-out (")[1].splitlines()[1:]
    assert table[0].split() == CV.COLUMNS
    assert [line.split()[0] for line in table[1:4]] == ["gen-a", "gen-b", "mean"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cv"], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("deepfake.role") == "crossval"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["crossval.held_out"] for r in children) == ["gen-a", "gen-b"]
    assert {"held_out.gen-a.roc_auc", "held_out.gen-b.roc_auc", "mean_held_out_roc_auc"} <= set(parent.data.metrics)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "crossval")}
    assert arts == {"crossval/crossval.csv", "crossval/crossval.png"}
    folder = tmp_path / "out" / "crossval-source"
    with (folder / CV.CSV_FILE).open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CV.COLUMNS
        assert [row["held_out"] for row in reader] == ["gen-a", "gen-b", "mean"]
    assert not list(folder.glob(f".*{atomic.TMP_MARK}*"))  # written atomically: no temporary left
    # A source that is not there: one line, exit 2.
    bad = CliRunner().invoke(main, ["crossval", "--data", str(sourced), "--source", "gen-z", "--tracking-uri", uri])
    assert bad.exit_code == 2 and "--source gen-z: no fakes with that source" in bad.output


def test_tables_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / CV.CSV_FILE
    rows = [{"held_out": "gen-a", "roc_auc": 0.75}, {"held_out": "a, \"b\"", "roc_auc": float("nan")}]
    assert atomic.write_csv(path, rows) == path
    assert list(csv.DictReader(path.open(newline=""))) == [{"held_out": "gen-a", "roc_auc": "0.75"},
                                                           {"held_out": 'a, "b"', "roc_auc": "nan"}]
    assert path.read_bytes().startswith(b"held_out,roc_auc\r\ngen-a,0.75\r\n")  # the csv module's lines
    atomic.write_csv(path, [], columns=["held_out", "roc_auc"])
    assert path.read_bytes() == b"held_out,roc_auc\r\n"  # no rows: the header
    before = path.read_bytes()

    def killed(tmp):
        raise KeyboardInterrupt  # the process is stopped after the table was written, before it replaced the old one

    monkeypatch.setattr(atomic, "_fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_csv(path, rows)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [CV.CSV_FILE]
