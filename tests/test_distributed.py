"""Two tuning workers share one study through the local PostgreSQL server (MLflow on PostgreSQL too)."""

import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.helpers import TINY_ARGS

PG = "postgresql://postgres@127.0.0.1:5432"


def _admin():
    import psycopg

    return psycopg.connect(f"{PG}/test", connect_timeout=3, autocommit=True)


@pytest.fixture()
def databases():
    """Fresh Optuna and MLflow databases on the local server, dropped afterwards."""
    try:
        conn = _admin()
    except (OSError, psycopg.Error) as exc:  # pragma: no cover - depends on the machine
        reason = f"PostgreSQL at 127.0.0.1:5432 is not reachable ({type(exc).__name__}); start it to run this test"
        print(reason)
        pytest.skip(reason)
    names = [f"deepfake_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE {name}")
    yield [f"{PG}/{name}" for name in names]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_study(databases, tiny_split_dataset, tmp_path):
    import mlflow
    import optuna

    storage, tracking_uri = databases
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  model.dropout: {type: float, low: 0.0, high: 0.5}\nsampler: {type: random}\n"
                     "pruner: {type: none}\n")
    args = ["tune", "--data", str(tiny_split_dataset), "--study-name", "shared", "--storage", storage,
            "--n-trials", "4", "--search-space", str(space), "--tracking-uri", tracking_uri, "--experiment", "dist",
            *TINY_ARGS, "--set", "train.feature_cache=true", "--epochs", "1", "--fine-tune-epochs", "0",
            "--no-register", "--set", "tracking.log_model=false"]
    # Initialise the MLflow schema once, so two fresh workers do not race to create it.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("dist")
    workers = [
        subprocess.Popen([sys.executable, "-c", "from deepfake.cli import main; main()", *args,
                          "--output-dir", str(tmp_path / f"w{i}")], cwd=tmp_path, env=dict(os.environ),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, out in zip(workers, outputs, strict=True):
        assert w.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))  # no duplicate trial numbers
    drawn = [tuple(sorted(t.params.items())) for t in study.trials
             if t.params and "fixed_params" not in t.system_attrs and "failed_trial" not in t.system_attrs]
    assert len(drawn) == len(set(drawn))  # and the two workers never drew the same parameters
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) >= 4
    # Both workers contributed (each logs its own trials).
    assert all("[trial" in out for out in outputs)
    runs = mlflow.search_runs(experiment_names=["dist"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("deepfake.role") == "study"]
    assert len(parents) == 1
    trial_runs = [r for r in runs if "optuna.trial_number" in r.data.tags]
    assert {int(r.data.tags["optuna.trial_number"]) for r in trial_runs} >= {t.number for t in finished}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trial_runs)
