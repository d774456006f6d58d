"""Tuning under faults (issue 11, points 1-5): restarted and concurrent workers, killed workers, outages of the
Optuna database and the MLflow tracking server, registration run twice or interrupted, search-space mistakes.

Trials are fake (:mod:`tests.fake_trials`: real MLflow runs and Optuna reports, no training), so these tests
exercise the tuning machinery in seconds; ``test_tuning.py`` runs studies of real trainings.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
from click.testing import CliRunner

from deepfake import config as C
from deepfake import registry, tracking, tuning
from deepfake.cli import main
from deepfake.errors import DeepfakeError
from tests import fake_trials
from tests.helpers import SEARCH_SPACE, TUNE_EXPERIMENT, tune_args
from tests.netproxy import Proxy

ROOT = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, "-c", "from tests.fake_trials import main; main()"]
RUNNING = optuna.trial.TrialState.RUNNING
FAIL = optuna.trial.TrialState.FAIL
COMPLETE = optuna.trial.TrialState.COMPLETE


def start_worker(args, **environment):
    """A ``deepfake tune`` worker process with fake trials; its output goes to a file (read with ``output``)."""
    log = open(Path(args[args.index("--output-dir") + 1]).parent / f"worker-{uuid.uuid4().hex[:6]}.log", "w+")
    proc = subprocess.Popen([*WORKER, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **environment})
    proc.log = log
    return proc


def output(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


_STORAGES: dict = {}  # one RDBStorage (one connection pool) per URL: polling must not open a pool per call


def load(storage, study):
    if storage not in _STORAGES:
        _STORAGES[storage] = optuna.storages.RDBStorage(storage)
    return optuna.load_study(study_name=study, storage=_STORAGES[storage])


def wait_for_trial(storage, study, reported=1, timeout=120):
    """Wait until a trial of ``study`` is RUNNING and has reported ``reported`` epochs; return it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for trial in load(storage, study).get_trials(deepcopy=False, states=(RUNNING,)):
                if len(trial.intermediate_values) >= reported:
                    return trial
        except KeyError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"no trial of study {study} got going within {timeout} s")


def trial_runs(uri, study):
    """The MLflow runs of a study's trials by trial number, and all runs of the experiment."""
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[TUNE_EXPERIMENT], output_format="list")
    return {int(r.data.tags["optuna.trial_number"]): r for r in runs
            if r.data.tags.get("optuna.study_name") == study and "optuna.trial_number" in r.data.tags}, runs


def drawn_params(study):
    """Parameter sets the sampler drew (enqueued trials and retries of failed ones reuse earlier ones)."""
    return [tuple(sorted(t.params.items())) for t in study.trials
            if t.params and "fixed_params" not in t.system_attrs and "failed_trial" not in t.system_attrs]


# ----------------------------------------------------------------------------- 1. new points per worker


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_restarted_worker_draws_new_parameters(env, monkeypatch, sampler):
    fake_trials.install(monkeypatch)
    env.space.write_text(SEARCH_SPACE % sampler)
    for n in (2, 4):  # the second command is a restart that continues the study
        result = CliRunner().invoke(main, tune_args(env, "restart", n))
        assert result.exit_code == 0, result.output
    study = load(env.storage, "restart")
    drawn = drawn_params(study)
    # The new study's first trial is the configuration's own values (enqueued); the sampler drew the other three.
    assert len(study.trials) == 4 and study.trials[0].user_attrs.get(tuning.BASELINE_ATTR), study.trials
    assert len(drawn) == 3 and len(set(drawn)) == 3, drawn


def test_trial_seeds_depend_on_study_config_seed_and_trial():
    a = tuning.TrialSeededSampler({"type": "random"}, "s", 42)
    assert a.seed_for(3) == tuning.TrialSeededSampler({"type": "random"}, "s", 42).seed_for(3)  # reproducible
    assert len({a.seed_for(n) for n in range(50)}) == 50
    assert a.seed_for(3) != tuning.TrialSeededSampler({"type": "random"}, "s", 7).seed_for(3)
    assert a.seed_for(3) != tuning.TrialSeededSampler({"type": "random"}, "other", 42).seed_for(3)


def test_a_waiting_trial_is_claimed_by_one_sqlite_worker_only(tmp_path):
    """Claiming a waiting trial reads its state, then writes RUNNING: on SQLite both must be one transaction,
    or two workers read WAITING and run the same trial (seen in CI: both workers ran the enqueued baseline)."""
    import sqlalchemy.exc

    url = f"sqlite:///{tmp_path}/optuna.db"
    first, second = tuning.make_storage(url), tuning.make_storage(url)
    study = optuna.create_study(storage=first, study_name="claim")
    study.enqueue_trial({"x": 1.0})
    (trial,) = study.get_trials(deepcopy=False)
    with first.rdb.engine.connect() as conn, conn.begin():  # the first worker has read WAITING ...
        state = conn.exec_driver_sql("SELECT state FROM trials WHERE trial_id = ?", (trial._trial_id,)).scalar()
        assert state == "WAITING"
        started = time.monotonic()
        with pytest.raises(optuna.exceptions.StorageInternalError) as refused:  # ... so the second cannot claim it
            second.rdb.set_trial_state_values(trial._trial_id, RUNNING)
        assert isinstance(refused.value.__cause__, sqlalchemy.exc.OperationalError), refused.value.__cause__
        assert "locked" in str(refused.value.__cause__)  # a busy database: RetryingStorage retries it
        assert time.monotonic() - started >= 1  # it waited for the lock (SQLite's busy timeout) before giving up
    assert first.rdb.set_trial_state_values(trial._trial_id, RUNNING) is True
    assert second.rdb.set_trial_state_values(trial._trial_id, RUNNING) is False  # now it sees RUNNING


@pytest.mark.slow
def test_two_workers_and_a_restarted_one_never_repeat_parameters(env):
    """Two workers started together on one study, then a third after they stopped: no parameter set twice."""
    env.space.write_text(SEARCH_SPACE % "tpe")
    mlflow.set_tracking_uri(env.uri)  # create both schemas once, so that the workers do not race to
    mlflow.set_experiment(TUNE_EXPERIMENT)
    tuning.make_storage(env.storage)
    workers = [start_worker(tune_args(env, "pair", 4), FAKE_EPOCH_SECONDS="0.2") for _ in range(2)]
    for proc in workers:
        assert proc.wait(timeout=300) == 0, output(proc)
    restarted = start_worker(tune_args(env, "pair", 6))
    assert restarted.wait(timeout=300) == 0, output(restarted)
    study = load(env.storage, "pair")
    drawn = drawn_params(study)
    assert len([t for t in study.trials if t.state == COMPLETE]) >= 6
    assert len(drawn) >= 5 and len(set(drawn)) == len(drawn), drawn  # the first trial is the enqueued baseline


# ----------------------------------------------------------------------------- 2. runs of killed trials


@pytest.mark.slow
def test_a_killed_trials_run_is_failed_with_the_reason_and_its_retry_gets_a_new_run(env, monkeypatch):
    proc = start_worker(tune_args(env, "kill", 2, "--heartbeat", "1"), FAKE_EPOCHS="200", FAKE_EPOCH_SECONDS="0.2")
    killed = wait_for_trial(env.storage, "kill").number
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # > the grace period (2 x heartbeat): the trial is stale
    fake_trials.install(monkeypatch)
    result = CliRunner().invoke(main, tune_args(env, "kill", 2, "--heartbeat", "1"))
    assert result.exit_code == 0, result.output

    study = load(env.storage, "kill")
    states = {t.number: t.state for t in study.trials}
    assert states[killed] == FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == COMPLETE
    by_trial, runs = trial_runs(env.uri, "kill")
    dead = by_trial[killed]
    assert dead.info.status == "FAILED" and dead.data.tags["state"] == "FAILED"
    assert "heartbeat" in dead.data.tags["error"] and "retried" in dead.data.tags["error"]
    assert study.trials[killed].user_attrs[tuning.RUN_ATTR] == dead.info.run_id
    retry_run = by_trial[retries[0].number]
    assert retry_run.info.run_id != dead.info.run_id and retry_run.info.status == "FINISHED"
    assert retry_run.data.tags["optuna.retry_of"] == str(killed)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []


@pytest.mark.slow
def test_a_stale_trial_is_failed_before_the_study_is_declared_finished(env, monkeypatch):
    """A worker killed mid-trial, and the rerun finishes the study before the killed trial is stale: the rerun
    waits for its heartbeat to expire, so no trial and no run of the finished study is left RUNNING."""
    proc = start_worker(tune_args(env, "settle", 1, "--heartbeat", "2"), FAKE_EPOCHS="200", FAKE_EPOCH_SECONDS="0.2")
    killed = wait_for_trial(env.storage, "settle").number
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fake_trials.install(monkeypatch)
    result = CliRunner().invoke(main, tune_args(env, "settle", 1, "--heartbeat", "2"))
    assert result.exit_code == 0, result.output

    study = load(env.storage, "settle")
    assert study.trials[killed].state == FAIL
    assert [t.number for t in study.trials if t.state == RUNNING] == []
    by_trial, runs = trial_runs(env.uri, "settle")
    assert by_trial[killed].info.status == "FAILED" and "heartbeat" in by_trial[killed].data.tags["error"]
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []


# ----------------------------------------------------------------------------- 3. outages


def test_a_closed_tracking_port_fails_within_seconds(env, monkeypatch):
    # MLflow's own default is 7 retries with backoff (minutes); the start-up check must not wait them out.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
    started = time.time()
    result = CliRunner().invoke(main, tune_args(env, "closed", 1, uri="http://127.0.0.1:9"))
    assert time.time() - started < 15
    assert result.exit_code == 2, result.output
    assert "--tracking-uri http://127.0.0.1:9" in result.output and "Traceback" not in result.output
    assert not (env.tmp / "optuna.db").exists()  # stopped before anything was recorded


def test_unreachable_names_the_tracking_store_only_for_network_errors():
    import requests

    try:
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except requests.exceptions.ConnectionError:
            raise RuntimeError("API request to http://x/api failed")  # noqa: B904 - how MLflow wraps it
    except RuntimeError as exc:
        assert "cannot be reached" in tracking.unreachable(exc)
    assert tracking.unreachable(ValueError("bad value")) is None


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import requests

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return server, port
        except requests.RequestException:
            time.sleep(0.5)
    server.kill()
    raise AssertionError("the MLflow server did not start")


@pytest.mark.slow
def test_tracking_server_outages_are_ridden_out_or_end_the_trial_cleanly(env, monkeypatch):
    server, port = start_mlflow_server(env.tmp)
    proxy = Proxy(port)
    uri = f"http://127.0.0.1:{proxy.port}"
    try:
        # 6 s down in the middle of a trial: MLflow's retries ride it out.
        proc = start_worker(tune_args(env, "blip", 1, uri=uri), FAKE_EPOCHS="30", FAKE_EPOCH_SECONDS="0.3")
        wait_for_trial(env.storage, "blip")
        proxy.down()
        time.sleep(6)
        proxy.up()
        assert proc.wait(timeout=180) == 0, output(proc)
        assert "Traceback" not in output(proc)
        assert [t.state for t in load(env.storage, "blip").trials] == [COMPLETE]

        # Down for longer than the retries (shortened here): the trial fails, one line, exit 2.
        proc = start_worker(tune_args(env, "down", 1, uri=uri), FAKE_EPOCHS="200", FAKE_EPOCH_SECONDS="0.2",
                            MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
        failed = wait_for_trial(env.storage, "down").number
        proxy.down()
        assert proc.wait(timeout=120) == 2, output(proc)
        text = output(proc)
        assert "Traceback" not in text
        errors = [line for line in text.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and f"--tracking-uri {uri}" in errors[0] and f"trial {failed} failed" in errors[0]
        study = load(env.storage, "down")
        assert study.trials[failed].state == FAIL
        assert [t.system_attrs.get("failed_trial") for t in study.trials if t.state.name == "WAITING"] == [failed]

        # The server is back: the next worker retries the trial and ends the old run as FAILED.
        proxy.up()
        fake_trials.install(monkeypatch)
        result = CliRunner().invoke(main, tune_args(env, "down", 1, uri=uri))
        assert result.exit_code == 0, result.output
        study = load(env.storage, "down")
        assert [t.state for t in study.trials] == [FAIL, COMPLETE]
        by_trial, runs = trial_runs(uri, "down")
        assert by_trial[failed].info.status == "FAILED"
        assert "MLflow tracking store cannot be reached" in by_trial[failed].data.tags["error"]
        assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    finally:
        proxy.down()
        server.terminate()
        server.wait(timeout=30)


PG = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture()
def pg_database():
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(f"{PG}/test", connect_timeout=3, autocommit=True)
    except (OSError, psycopg.Error) as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({type(exc).__name__})")
    name = f"deepfake_outage_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE DATABASE {name}")
    yield name
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_database_outages_are_ridden_out_or_end_the_trial_cleanly(env, pg_database, monkeypatch):
    proxy = Proxy(5432)
    direct = f"{PG}/{pg_database}"
    storage = f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database}"
    try:
        # 4 s down in the middle of a trial; the storage rides out up to the grace period (2 x 5 s).
        proc = start_worker(tune_args(env, "blip", 1, "--heartbeat", "5", storage=storage),
                            FAKE_EPOCHS="30", FAKE_EPOCH_SECONDS="0.3")
        wait_for_trial(direct, "blip")
        proxy.down()
        time.sleep(4)
        proxy.up()
        assert proc.wait(timeout=180) == 0, output(proc)
        assert "Traceback" not in output(proc)
        assert [t.state for t in load(direct, "blip").trials] == [COMPLETE]

        # Down for longer than the grace period (2 x 1 s): one line naming the storage, exit 2.
        proc = start_worker(tune_args(env, "down", 1, "--heartbeat", "1", storage=storage),
                            FAKE_EPOCHS="200", FAKE_EPOCH_SECONDS="0.2")
        stuck = wait_for_trial(direct, "down").number
        proxy.down()
        assert proc.wait(timeout=120) == 2, output(proc)
        text = output(proc)
        assert "Traceback" not in text
        errors = [line for line in text.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "--storage postgresql://***@127.0.0.1" in errors[0], errors
        assert f"trial {stuck}" in errors[0]

        # The database is back: the next worker fails the stale trial, retries it and ends its run as FAILED.
        proxy.up()
        fake_trials.install(monkeypatch)
        result = CliRunner().invoke(main, tune_args(env, "down", 1, "--heartbeat", "1", storage=storage))
        assert result.exit_code == 0, result.output
        study = load(direct, "down")
        assert study.trials[stuck].state == FAIL
        assert [t.number for t in study.trials if t.state == RUNNING] == []
        by_trial, runs = trial_runs(env.uri, "down")
        assert by_trial[stuck].info.status == "FAILED"
        assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    finally:
        proxy.down()


# ----------------------------------------------------------------------------- 4. registration


class _Model(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _logged_model(uri):
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("reg")
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=_Model(), pip_requirements=[])
    return run.info.run_id


def test_registration_is_idempotent_per_run_and_completes_an_interrupted_one(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = C.resolve(set_args=[f"tracking.tracking_uri={uri}"])
    info = SimpleNamespace(root=str(tmp_path))
    aucs = {}
    monkeypatch.setattr(registry, "evaluate_model",
                        lambda ref, info, out, **kw: {"metrics": {"roc_auc": aucs[tracking.version_info(
                            "deepfake-detector", ref.rsplit("/", 1)[1])["run_id"]]}})
    client = mlflow.MlflowClient(uri)
    lines = []

    first = _logged_model(uri)
    aucs[first] = 0.8
    for _ in range(3):  # a study finished and rerun: still one version of its best run
        record = registry.register_and_promote(tracking.run_model_uri(first), cfg, info, echo=lines.append,
                                               version_tags={"source_run_id": first})
        assert record["version"] == "1" and record["promoted"] is True
    assert [str(v.version) for v in client.search_model_versions("name = 'deepfake-detector'")] == ["1"]
    assert "already registered" in lines[-1]

    # Killed while comparing with the champion: the version exists without its comparison ...
    second = _logged_model(uri)
    aucs[second] = 0.9

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(registry, "evaluate_model", killed)
        with pytest.raises(KeyboardInterrupt):
            registry.register_and_promote(tracking.run_model_uri(second), cfg, info, echo=lines.append)
    assert "comparison.reason" not in client.get_model_version("deepfake-detector", "2").tags
    # ... and registering the run again completes that version instead of adding a third.
    record = registry.register_and_promote(tracking.run_model_uri(second), cfg, info, echo=lines.append)
    assert record["version"] == "2" and record["promoted"] is True
    versions = client.search_model_versions("name = 'deepfake-detector'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    tags = client.get_model_version("deepfake-detector", "2").tags
    assert tags["comparison.promoted"] == "True" and tags["comparison.champion_version"] == "1"
    assert str(client.get_model_version_by_alias("deepfake-detector", "champion").version) == "2"


# ----------------------------------------------------------------------------- 5. search-space mistakes


@pytest.mark.parametrize("body, fragment", [
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5, step: 0}\n", "'model.dropout' has step 0"),
    ("params:\n  train.fine_tune_stages: {type: int, low: 1, high: 3, step: 0}\n",
     "'train.fine_tune_stages' has step 0"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5, step: -0.1}\n", "has step -0.1"),
    ("params:\n  train.fine_tune_stages: {type: int, low: 1, high: 3, step: 0.5}\n", "has step 0.5"),
    ("params:\n  train.fine_tune_stages: {type: int, low: 1.5, high: 3}\n", "must be integers"),
    ("params:\n  train.learning_rate: {type: float, low: 1.0e-4, high: 0.1, log: true, step: 0.01}\n",
     "both 'step' and 'log: true'"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5, log: maybe}\n", "log 'maybe'"),
    ("params:\n  model.dropout: {type: categorical, choices: [0.1], low: 0}\n", "takes only 'choices'"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\npruner: {type: median, n_startup_trials: -1}\n",
     "pruner n_startup_trials must be an integer >= 0 (got -1)"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\npruner: {type: median, n_warmup_steps: -3}\n",
     "pruner n_warmup_steps must be an integer >= 0 (got -3)"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\npruner: {type: median, interval_steps: 0}\n",
     "pruner interval_steps must be an integer >= 1"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\nsampler: {type: tpe, n_startup_trials: -1}\n",
     "sampler n_startup_trials must be an integer >= 0 (got -1)"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\nsampler: {type: tpe, n_ei_candidates: 0}\n",
     "sampler n_ei_candidates must be an integer >= 1"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\nsampler: {type: random, seed: 3}\n",
     "sampler seed is not an option"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\nsampler: {type: tpe, bogus: 1}\n",
     "sampler 'tpe': "),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\npruner: hyperband\n", "'pruner' must be a mapping"),
    ("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\n"
     "pruner: {type: successive_halving, reduction_factor: 1}\n", "pruner reduction_factor must be an integer >= 2"),
])
def test_search_space_mistakes_are_named_in_one_line(tmp_path, body, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(DeepfakeError) as caught:
        tuning.load_search_space(path)
    message = str(caught.value)
    assert fragment in message and str(path) in message and "\n" not in message


def test_a_search_space_mistake_stops_tune_before_anything_is_recorded(env, monkeypatch):
    fake_trials.install(monkeypatch)
    env.space.write_text("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5, step: 0}\n")
    result = CliRunner().invoke(main, tune_args(env, "bad", 1))
    assert result.exit_code == 2, result.output
    assert "'model.dropout' has step 0" in result.output and "Traceback" not in result.output
    assert not (env.tmp / "optuna.db").exists() and not (env.tmp / "mlflow.db").exists()


# ----------------------------------------------------------------------------- tuning for a second dataset


def test_optimise_both_is_a_two_objective_study_with_its_pareto_front_and_the_mean_rule(env, monkeypatch):
    fake_trials.install(monkeypatch)
    result = CliRunner().invoke(main, tune_args(env, "pareto", 6, "--also-data", env.data, "--optimise", "both"))
    assert result.exit_code == 0, result.output
    assert f"Every trial is also scored on {env.data} (test:" in result.output
    study = load(env.storage, "pareto")
    assert len(study.directions) == 2
    complete = [t for t in study.trials if t.state == COMPLETE]
    assert len(complete) == 6
    for t in complete:  # (primary, also) as the fake trial computes them from its dropout
        d = t.params["model.dropout"]
        assert t.values == pytest.approx([1.0 - abs(d - 0.25), 0.5 + d])
        assert t.user_attrs[tuning.ALSO_ATTR] == pytest.approx(0.5 + d)
    front = study.best_trials
    best = max(front, key=lambda t: (sum(t.values) / 2, t.values[0], -t.number))
    assert tuning.pareto_choice(front, study.directions).number == best.number
    assert "Pareto front (trial: primary, --also-data)" in result.output
    assert f"Best trial {best.number} (highest mean of the two on the front)" in result.output
    runs, _ = trial_runs(env.uri, "pareto")
    mlflow.set_tracking_uri(env.uri)
    parent = mlflow.get_run(runs[best.number].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["best.trial"] == str(best.number)
    assert parent.data.metrics["best_also_roc_auc"] == pytest.approx(best.values[1])
    assert sorted(map(int, parent.data.tags["pareto.trials"].split(","))) == sorted(t.number for t in front)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "study")}
    assert "study/pareto_front.png" in arts
    # The same study continued for one objective: refused in one line.
    again = CliRunner().invoke(main, tune_args(env, "pareto", 7))
    assert again.exit_code == 2 and "the study optimises other objectives" in again.output
    assert "Traceback" not in again.output


def test_optimise_also_maximises_the_second_datasets_score_and_needs_it(env, monkeypatch):
    fake_trials.install(monkeypatch)
    result = CliRunner().invoke(main, tune_args(env, "also", 4, "--also-data", env.data, "--optimise", "also"))
    assert result.exit_code == 0, result.output
    study = load(env.storage, "also")
    assert all(t.value == pytest.approx(0.5 + t.params["model.dropout"]) for t in study.trials if t.state == COMPLETE)
    assert study.best_trial.params["model.dropout"] == max(t.params["model.dropout"] for t in study.trials)
    missing = CliRunner().invoke(main, tune_args(env, "nope", 1, "--optimise", "both"))
    assert missing.exit_code == 2 and "--optimise both needs --also-data DIR" in missing.output
