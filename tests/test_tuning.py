"""Optuna studies: search space validation, nested MLflow runs, registry, resume, killed workers."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from click.testing import CliRunner

from deepfake import config as C
from deepfake import pipeline, tracking, tuning
from deepfake.cli import main
from deepfake.errors import DeepfakeError
from tests import fake_trials
from tests.helpers import TINY_ARGS, TUNE_EXPERIMENT, tune_args

# A trial: the tiny model, one head epoch (from the feature cache) and one fine-tuning epoch of one stage.
TRIAL = (*TINY_ARGS, "--set", "train.feature_cache=true", "--epochs", "1", "--fine-tune-epochs", "1",
         "--fine-tune-stages", "1")


@pytest.fixture()
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n"
        "  model.dropout: {type: float, low: 0.0, high: 0.5}\n"
        "  train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "  model.head_units: {type: categorical, choices: [8, 16]}\n"
        "sampler: {type: random}\n"
        "pruner: {type: none}\n"
    )
    return path


# ----------------------------------------------------------------------------- search space


def test_search_space_shipped_files_are_valid():
    names = C.shipped_names("", prefix="search_space")
    assert names == ["search_space", "search_space_demo", "search_space_faces"]
    for name in names:
        assert tuning.load_search_space(C.shipped(f"{name}.yaml")).params


@pytest.mark.parametrize("body, fragment", [
    ("params:\n  train.nope: {type: float, low: 0, high: 1}\n", "'train.nope' is not a config option"),
    ("params:\n  model.dropout: {type: float, low: 0.5, high: 0.1}\n", "low 0.5 > high 0.1"),
    ("params:\n  train.learning_rate: {type: float, low: 0, high: 0.1, log: true}\n", "low must be > 0"),
    ("params:\n  model.dropout: {type: categorical, choices: []}\n", "non-empty 'choices'"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 1.5}\n", "value 1.5 is impossible"),
    ("params:\n  model.dropout: {type: gaussian}\n", "type float, int or categorical"),
    ("params:\n  model.dropout: {type: float, low: 0, high: 0.3}\npruner: {type: magic}\n", "pruner type 'magic'"),
    ("params: {}\n", "non-empty 'params'"),
])
def test_bad_search_spaces_are_named(tmp_path, body, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(DeepfakeError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        tuning.load_search_space(path)


def test_suggest_covers_every_parameter(space):
    s = tuning.load_search_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = s.suggest(study.ask())
    assert set(values) == {"model.dropout", "train.learning_rate", "model.head_units"}
    assert 0 <= values["model.dropout"] <= 0.5 and values["model.head_units"] in (8, 16)


def test_baseline_is_the_configurations_values_that_the_space_holds(space):
    s = tuning.load_search_space(space)  # dropout 0..0.5, learning rate 1e-4..1e-2 (log), head_units 8 or 16
    cfg = C.resolve(set_args=["model.dropout=0.25", "train.learning_rate=0.003", "model.head_units=[16]"])
    assert s.baseline(cfg) == {"model.dropout": 0.25, "train.learning_rate": 0.003, "model.head_units": 16}
    outside = C.resolve(set_args=["model.dropout=0.6", "train.learning_rate=0.003", "model.head_units=[64]"])
    assert s.baseline(outside) == {"train.learning_rate": 0.003}  # the rest is the sampler's to draw


def test_a_new_study_starts_with_the_baseline_and_an_old_one_does_not(space):
    s = tuning.load_search_space(space)
    cfg = C.resolve(set_args=["model.dropout=0.25", "train.learning_rate=0.003", "model.head_units=[16]"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    printed: list[str] = []
    assert tuning.enqueue_baseline(study, s, cfg, printed.append) == s.baseline(cfg)
    assert "baseline" in printed[0]
    trial = study.ask()
    assert s.suggest(trial) == {"model.dropout": 0.25, "train.learning_rate": 0.003, "model.head_units": 16}
    assert trial.user_attrs[tuning.BASELINE_ATTR] is True
    study.tell(trial, 0.7)
    # A study that has trials (resumed, or joined by another worker) gets no second baseline.
    assert tuning.enqueue_baseline(study, s, cfg, printed.append) is None
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,)) and len(printed) == 1


def test_make_dashboard_serves_the_studies_of_the_storage(tmp_path):
    """`make dashboard` runs optuna-dashboard (a dev dependency) on OPTUNA_STORAGE; here a temporary one."""
    import json
    import shutil
    import socket
    import urllib.request

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="dashboard-probe", storage=storage)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    venv = Path(sys.executable).parent.parent  # the venv running the tests: -o keeps make from reinstalling it
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(Path(__file__).resolve().parents[1]), "dashboard", f"VENV={venv}",
         f"OPTUNA_STORAGE={storage}", f"DASHBOARD_PORT={port}", "-o", f"{venv}/bin/deepfake"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never through a proxy
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with local.open(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer within 60 s"
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["dashboard-probe"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize("url, fragment", [
    ("foo://x", "unsupported scheme"),
    ("optuna.db", "not a database URL"),
    ("postgresql://postgres@127.0.0.1:9/x", "cannot open the Optuna storage"),
])
def test_bad_storage_urls(url, fragment):
    with pytest.raises(DeepfakeError, match=fragment):
        tuning.make_storage(url)


# ----------------------------------------------------------------------------- the objective


@pytest.fixture()
def objective_for(tmp_path, space, monkeypatch):
    """``make(optimise)``: the objective of study "obj" over ``space``, its trials fake (:mod:`tests.fake_trials`:
    a real nested MLflow run, no training) under a parent run in a fresh MLflow database."""
    fake_trials.install(monkeypatch)
    tracking.setup(C.TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="objective"))
    parent = tracking.create_run("study-obj")
    cfg = C.resolve(set_args=[f"train.output_dir={tmp_path / 'out'}"])

    def make(optimise="primary"):
        return tuning.Objective(cfg, tuning.load_search_space(space), study_name="obj", parent_run_id=parent,
                                dataset=None, optimise=optimise, also=None if optimise == "primary" else "pictures",
                                echo=[].append)

    return make


@pytest.mark.parametrize("optimise", ["primary", "both"])
def test_the_objective_trains_a_trial_as_a_nested_run_and_returns_its_scores(objective_for, optimise, tmp_path):
    objective = objective_for(optimise)
    directions = tuning.study_directions("val_auc", optimise, also_data=optimise != "primary")
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = objective(trial)
    dropout = trial.params["model.dropout"]
    score = 1.0 - abs(dropout - 0.25)  # the fake trial's validation ROC-AUC; 0.5 + dropout on the --also-data set
    assert values == pytest.approx(score if optimise == "primary" else (score, 0.5 + dropout))
    assert objective.current == {"trial": trial.number}  # for the outage reports
    assert trial.user_attrs["test_roc_auc"] == pytest.approx(score)
    assert (tuning.ALSO_ATTR in trial.user_attrs) == (optimise == "both")
    run = mlflow.get_run(trial.user_attrs[tuning.RUN_ATTR])
    assert run.data.tags["mlflow.parentRunId"] == objective.parent_run_id
    assert run.data.tags["mlflow.runName"] == "trial-0000" and run.data.tags["state"] == "COMPLETE"
    assert run.data.tags["optuna.study_name"] == "obj" and run.data.tags["optuna.trial_number"] == "0"
    study.tell(trial, values)
    # Each trial trains the study's configuration with its own parameters, in its own folder.
    trial_cfg = objective.trial_config(7, {"model.dropout": 0.125, "model.head_units": 8})
    assert trial_cfg.model.dropout == 0.125 and trial_cfg.model.head_units == [8]
    assert trial_cfg.train.output_dir == str(tmp_path / "out" / "obj" / "trial_0007")


def test_the_objective_fails_a_trial_in_one_line_when_the_tracking_store_is_down(objective_for, monkeypatch):
    import requests

    def unreachable(*args, **kwargs):
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except requests.exceptions.ConnectionError:
            raise RuntimeError("API request to http://x/api failed")  # noqa: B904 - how MLflow wraps it

    monkeypatch.setattr(pipeline, "run", unreachable)
    objective = objective_for()
    trial = optuna.create_study(direction="maximize").ask()
    with pytest.raises(tuning.TrackingUnreachable, match="cannot be reached"):
        objective(trial)
    assert trial.user_attrs[tuning.FAILURE_ATTR].startswith("trial 0 failed: --tracking-uri")
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: 1 / 0)  # any other error is the trial's own
    with pytest.raises(ZeroDivisionError):
        objective(optuna.create_study().ask())


# ----------------------------------------------------------------------------- studies


@pytest.mark.slow
def test_study_nested_runs_registry_and_resume(env, space):
    result = CliRunner().invoke(main, tune_args(env, "s", 2, *TRIAL, space=space, register=True))
    assert result.exit_code == 0, result.output
    assert "promoted to @champion" in result.output
    mlflow.set_tracking_uri(env.uri)
    runs = mlflow.search_runs(experiment_names=[TUNE_EXPERIMENT], output_format="list")
    parents = [r for r in runs if r.data.tags.get("deepfake.role") == "study"]
    trials = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    assert all(r.data.tags["state"] == "COMPLETE" for r in trials)
    assert all("val_auc" in r.data.metrics and "model.dropout" in r.data.params for r in trials)
    # The new study's first trial is the configuration's own values (the tiny one: dropout 0.3, head_units [8]).
    first = next(r for r in trials if r.data.tags["optuna.trial_number"] == "0")
    second = trials[1 - trials.index(first)]
    assert first.data.tags["optuna.baseline"] == "true" and "optuna.baseline" not in second.data.tags
    assert first.data.params["model.dropout"] == "0.3" and first.data.params["train.learning_rate"] == "0.001"
    client = mlflow.MlflowClient()
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/trials.csv", "study/optimization_history.png", "study/parallel_coordinate.png"} <= parent_files
    assert parent.data.metrics["n_complete"] == 2 and "best.trial" in parent.data.tags
    trial_files = {a.path for a in client.list_artifacts(trials[0].info.run_id, "evaluation")}
    assert "evaluation/test_confusion_matrix.png" in trial_files
    # The champion is registered with its metrics and loads as a pyfunc.
    champion = client.get_model_version_by_alias("deepfake-detector", "champion")
    assert "test_roc_auc" in champion.tags and champion.tags["comparison.promoted"] == "True"
    model = mlflow.pyfunc.load_model("models:/deepfake-detector@champion")
    import pandas as pd

    images = sorted(str(p) for p in (Path(env.data) / "test").rglob("*.jpg"))
    out = model.predict(pd.DataFrame({"image": images}))
    assert list(out.columns)[:3] == ["fake_probability", "label", "error"] and len(out) == len(images)

    # Running the same command again resumes: the target is met, nothing is added or lost, and the best
    # trial's run keeps its one registered version.
    again = CliRunner().invoke(main, tune_args(env, "s", 2, *TRIAL, space=space, register=True))
    assert again.exit_code == 0, again.output
    assert "already registered for this run" in again.output
    assert [str(v.version) for v in client.search_model_versions("name = 'deepfake-detector'")] == ["1"]
    study = optuna.load_study(study_name="s", storage=env.storage)
    assert [t.number for t in study.trials] == [0, 1]
    # A larger target continues the same study under the same parent run.
    more = CliRunner().invoke(main, tune_args(env, "s", 3, *TRIAL, space=space))
    assert more.exit_code == 0, more.output
    study = optuna.load_study(study_name="s", storage=env.storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    runs = mlflow.search_runs(experiment_names=[TUNE_EXPERIMENT], output_format="list")
    assert len([r for r in runs if r.data.tags.get("deepfake.role") == "study"]) == 1
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]) == 3


@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried(env, space, tmp_path):
    args = tune_args(env, "k", 2, *TRIAL, "--heartbeat", "1", space=space)
    proc = subprocess.Popen([sys.executable, "-c", "from deepfake.cli import main; main()", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    storage = tuning.make_storage(env.storage, heartbeat_interval=1)
    deadline = time.time() + 300
    running = []
    while time.time() < deadline:
        try:
            study = optuna.load_study(study_name="k", storage=storage)
            running = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
        except KeyError:
            running = []
        if running:
            break
        time.sleep(0.5)
    assert running, "the worker never started a trial"
    time.sleep(3)  # well inside the trial (a few heartbeats)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = running[0].number
    time.sleep(3)  # > grace period (2 x heartbeat): the trial is now stale
    result = CliRunner().invoke(main, tune_args(env, "k", 2, *TRIAL, "--heartbeat", "1", space=space))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="k", storage=env.storage)
    states = {t.number: t.state for t in study.trials}
    assert states[killed] == optuna.trial.TrialState.FAIL
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 2
    retried = [optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in study.trials]
    assert killed in retried  # the killed trial was re-run with its parameters
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    # The killed trial's MLflow run was ended as FAILED with the reason; no run is left RUNNING.
    mlflow.set_tracking_uri(env.uri)
    runs = mlflow.search_runs(experiment_names=[TUNE_EXPERIMENT], output_format="list")
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    killed_runs = [r for r in runs if r.data.tags.get("optuna.trial_number") == str(killed)]
    assert all(r.info.status == "FAILED" and "heartbeat" in r.data.tags["error"] for r in killed_runs)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, fragment", [
    (["--storage", "foo://x"], "unsupported scheme"),
    (["--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow tracking store"),
    (["--storage", "postgresql://postgres@127.0.0.1:9/x"], "cannot open the Optuna storage"),
])
def test_tune_bad_input_is_one_line_exit_2(env, space, extra, fragment):
    result = CliRunner().invoke(main, [*tune_args(env, "bad", 1, *TRIAL, space=space, register=True), *extra])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_tune_unknown_search_space_key_exit_2(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  model.nope: {type: float, low: 0, high: 1}\n")
    result = CliRunner().invoke(main, tune_args(env, "bad", 1, *TRIAL, space=bad, register=True))
    assert result.exit_code == 2 and "model.nope" in result.output
