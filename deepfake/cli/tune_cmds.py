"""``deepfake tune``, ``suite``, ``register``, ``promote`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from deepfake.cli.app import config_from_options, main, require, training_options

DEFAULT_SEARCH_SPACE = "search_space"  # shipped with the package (deepfake/experiments/search_space.yaml)
SEARCH_SPACE_HELP = ("YAML search space (config keys -> distributions, sampler, pruner): a file, or a shipped one "
                     "by name (search_space, search_space_demo).")


def tune_options(func):
    options = [
        click.option("--study-name", required=True, help="Optuna study name; the same name and storage resume it."),
        click.option("--storage", default="sqlite:///optuna.db", show_default=True,
                     help="Optuna storage URL; postgresql://user@host/db lets many workers share the study."),
        click.option("--n-trials", default=10, show_default=True, type=click.IntRange(min=1),
                     help="Run until the study holds this many finished (complete or pruned) trials."),
        click.option("--timeout", default=0, show_default=True, type=click.FloatRange(min=0),
                     help="Stop starting new trials after this many seconds (0 = no limit)."),
        click.option("--search-space", default=DEFAULT_SEARCH_SPACE, show_default=True, type=click.Path(),
                     help=SEARCH_SPACE_HELP),
        click.option("--metric", default="val_auc", show_default=True,
                     type=click.Choice(["val_auc", "val_average_precision", "val_accuracy", "val_loss"]),
                     help="Validation metric to optimise and prune on."),
        click.option("--heartbeat", default=30, show_default=True, type=click.IntRange(min=1),
                     help="Seconds between trial heartbeats; a trial silent for 2x this is failed and retried."),
        click.option("--register/--no-register", default=True, show_default=True,
                     help="Register the best trial's model and promote it to @champion if it beats the champion."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_study(cfg, study_name, storage, n_trials, timeout, search_space, metric, heartbeat, register):
    from deepfake import data as D
    from deepfake import pipeline, tracking, tuning

    space = tuning.load_search_space(search_space)  # a mistake in it stops before anything is recorded
    tracking.setup(cfg.tracking)
    result = tuning.tune(cfg, study_name=study_name, storage=storage, n_trials=n_trials, timeout=timeout or None,
                         search_space=space, metric=metric, heartbeat_interval=heartbeat, echo=click.echo)
    record = None
    if register and result.best_model_uri:
        with tracking.outages_reported("; the study is kept: run the same command again to register its best model"):
            info = D.scan_dataset(cfg.data, seed=cfg.train.seed)
            trial_run = result.best_run_id
            metrics = tracking.run_info(trial_run)["metrics"]
            tags = {k: round(v, 6) for k, v in metrics.items() if k.startswith(("test_", "val_final_"))}
            tags |= {"study": study_name, "trial": result.best_trial, "source_run_id": trial_run}
            record = pipeline.register_and_promote(result.best_model_uri, cfg, info, version_tags=tags,
                                                   out_dir=Path(cfg.train.output_dir) / study_name / "registry",
                                                   echo=click.echo)
            with tracking.start_run(run_id=result.parent_run_id):
                tracking.log_dict(record, "registry/comparison.json")
                tracking.set_tags({f"registry.{k}": v for k, v in record.items()})
    return result, record


@main.command()
@training_options
@tune_options
def tune(study_name, storage, n_trials, timeout, search_space, metric, heartbeat, register, **options) -> None:
    """Run (or resume) an Optuna study of two-phase transfer-learning trainings.

    Every trial is an MLflow run nested under the study's parent run, pruned on the
    validation metric per epoch. Start the same command on several machines with a shared
    --storage (PostgreSQL) and MLFLOW_TRACKING_URI to tune in parallel.
    """
    cfg = config_from_options(**options)
    require(cfg.data.path, "--data", "give the dataset folder")
    _run_study(cfg, study_name, storage, n_trials, timeout, search_space, metric, heartbeat, register)


@main.command()
@click.option("--data", default="", help="Dataset root; empty = make the synthetic demo dataset in --demo-dir.")
@click.option("--demo-dir", default="demo_data", show_default=True, type=click.Path(), help="Where demo data goes.")
@click.option("--config", "config_files", multiple=True, default=("demo",), show_default=True,
              type=click.Path(), help="YAML config file(s), or shipped config(s) by name (default, demo, ai_vs_real).")
@click.option("--study-name", default="demo", show_default=True, help="Optuna study name.")
@click.option("--storage", default="sqlite:///optuna.db", show_default=True, help="Optuna storage URL.")
@click.option("--n-trials", default=3, show_default=True, type=click.IntRange(min=1), help="Finished trials wanted.")
@click.option("--search-space", default="search_space_demo", show_default=True, type=click.Path(),
              help=SEARCH_SPACE_HELP)
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
@click.option("--experiment", default=None, help="MLflow experiment name.")
@click.option("--seed", default=None, type=int, help="Random seed.")
def suite(data, demo_dir, config_files, study_name, storage, n_trials, search_space, tracking_uri, experiment, seed):
    """The whole experiment suite (MLproject 'main'): demo data, study, champion, evaluation, sample.

    \b
    1. makes the synthetic demo dataset when --data is empty,
    2. runs a small Optuna study (every trial a nested MLflow run),
    3. registers the best model and promotes it to @champion if it wins on the test split,
    4. evaluates the champion on the test split and saves a sample prediction figure,
       both logged to the study's parent run.
    """
    import time

    from deepfake import data as D
    from deepfake import plots, tracking
    from deepfake.demo import make_demo_dataset
    from deepfake.inference import sample_predictions

    started = time.time()

    if not data:
        data = demo_dir
        if not (Path(demo_dir) / "train").is_dir():
            click.echo(f"Writing the synthetic demo dataset to {demo_dir}/ ...")
            make_demo_dataset(demo_dir, seed=0)
    cfg = config_from_options(config_files=config_files, data=data, tracking_uri=tracking_uri,
                              experiment=experiment, seed=seed)
    result, record = _run_study(cfg, study_name, storage, n_trials, None, search_space, "val_auc", 30, True)
    if record is None:
        raise click.ClickException("no trial completed, so there is no model to register")
    champion_uri = f"models:/{cfg.tracking.registered_model}@champion"
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed)
    from deepfake import pipeline

    out = Path(cfg.train.output_dir) / study_name / "champion"
    evaluation = pipeline.evaluate_model(champion_uri, info, out, echo=click.echo)
    pick = sample_predictions(evaluation["predictor"], info.splits["test"], info.class_names, n=1,
                              seed=cfg.train.seed)[0]
    figure = plots.plot_sample(pick["image"], pick["true_label"], pick["predicted_label"], pick["fake_probability"],
                               out / "sample_prediction.png", title=pick["name"])
    click.echo(f"Sample: {pick['path']}: true {pick['true_label']}, predicted {pick['predicted_label']} "
               f"(fake probability {pick['fake_probability']:.3f})")
    with tracking.start_run(run_id=result.parent_run_id):
        tracking.log_metrics(evaluation["metrics"], prefix="champion_test_")
        tracking.log_artifacts([out], "champion")
    click.echo(f"\nDone in {(time.time() - started) / 60:.1f} min. Champion: {champion_uri} "
               f"(test ROC-AUC {evaluation['metrics']['roc_auc']:.4f}). Sample figure: {figure}")
    click.echo(f"Look at it: mlflow ui --backend-store-uri {tracking.active_tracking_uri()}")


@main.command()
@click.option("--run-id", required=True, help="MLflow run whose logged model to register (e.g. a trial run).")
@click.option("--data", required=True, type=click.Path(), help="Dataset whose test split decides the champion.")
@click.option("--name", default="deepfake-detector", show_default=True, help="Registered model name.")
@click.option("--force", is_flag=True, help="Promote even if it does not beat the champion.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
def register(run_id, data, name, force, tracking_uri) -> None:
    """Register a run's model and promote it to @champion if it beats the current champion."""
    from deepfake import data as D
    from deepfake import pipeline, tracking
    from deepfake.config import resolve

    cfg = resolve(overrides={"data": {"path": data}, "tracking": {"tracking_uri": tracking_uri, "registered_model": name}})
    tracking.setup(cfg.tracking)
    metrics = tracking.run_info(run_id)["metrics"]
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed)
    tags = {k: round(v, 6) for k, v in metrics.items() if k.startswith(("test_", "val_final_"))} | {"source_run_id": run_id}
    pipeline.register_and_promote(tracking.run_model_uri(run_id), cfg, info, version_tags=tags, force=force,
                                  echo=click.echo)


@main.command()
@click.option("--version", "version", required=True, help="Registered model version to promote.")
@click.option("--data", required=True, type=click.Path(), help="Dataset whose test split decides the champion.")
@click.option("--name", default="deepfake-detector", show_default=True, help="Registered model name.")
@click.option("--force", is_flag=True, help="Move @champion even if the version does not win.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
def promote(version, data, name, force, tracking_uri) -> None:
    """Move @champion to VERSION if it beats the current champion on the test split."""
    from deepfake import data as D
    from deepfake import pipeline, tracking
    from deepfake.config import resolve

    cfg = resolve(overrides={"data": {"path": data}, "tracking": {"tracking_uri": tracking_uri}})
    tracking.setup(cfg.tracking)
    tracking.version_info(name, version)
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed)
    pipeline.promote(name, version, info, force=force, echo=click.echo)


@main.command()
@click.option("--model", "model_ref", default="models:/deepfake-detector@champion", show_default=True,
              help="Model folder, .keras file or MLflow URI.")
@click.option("--data", required=True, type=click.Path(), help="Dataset root (either layout) to evaluate on.")
@click.option("--split", default="auto", show_default=True, type=click.Choice(["auto", "all", "train", "val", "test"]),
              help="Which images: auto = all of a dataset without train/ (e.g. DATA/{real,fake}/ or only "
                   "DATA/test/), the test split of a training dataset (with train/); all = every image; "
                   "train/val/test = that split as training made it.")
@click.option("--metadata", default=None, type=click.Path(dir_okay=False),
              help="CSV with columns path,source: adds a per-source table (which generator fools the model).")
@click.option("--robustness", is_flag=True,
              help="Also evaluate under JPEG q95/75/50/30, Gaussian blur sigma 1/2 and 50% downscaling.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write a self-contained HTML report.")
@click.option("--output-dir", default="outputs/evaluate", show_default=True, type=click.Path(),
              help="Where figures, tables and the report go.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
@click.option("--experiment", default="deepfake-evaluation", show_default=True, help="MLflow experiment for the run.")
def evaluate(model_ref, data, split, metadata, robustness, report, output_dir, tracking_uri, experiment) -> None:
    """Evaluate any model on any dataset (cross-dataset evaluation), logged as an MLflow run.

    A held-out dataset is evaluated whole: an unsplit folder (DATA/real/, DATA/fake/) or one
    holding only some split folders (say DATA/test/{real,fake}/) gives every image; a training
    dataset (with DATA/train/) gives its test split (--split chooses).

    Prints how many images were used and the metrics table (threshold stored with the model),
    and with --metadata a per-source table, with --robustness a metric-versus-damage table; all
    tables, figures (ROC, PR, confusion matrix, reliability diagram) and the HTML report are
    logged to the run.
    """
    from deepfake import data as D
    from deepfake import evaluation as E
    from deepfake import pipeline, tracking
    from deepfake.config import resolve
    from deepfake.report import build_report

    cfg = resolve(overrides={"data": {"path": data}, "tracking": {"tracking_uri": tracking_uri, "experiment": experiment}})
    tracking.setup(cfg.tracking)
    out = Path(output_dir)
    tags = {"model_uri": model_ref, "deepfake.role": "evaluation"}
    if model_ref.startswith("models:/"):
        tags["registered_model"] = model_ref[len("models:/"):]
    from deepfake.inference import load_predictor

    predictor = load_predictor(model_ref)
    cfg.data.class_names = predictor.meta.class_names
    info, split = D.scan_evaluation_dataset(cfg.data, split=split, seed=cfg.train.seed)
    target = info.splits[split]
    counts = ", ".join(f"{n} {name}" for name, n in target.counts(info.class_names).items())
    click.echo(info.report())
    what = ("every image" if split == "all" else f"every image of {split}/" if len(info.splits) == 1
            else f"its {split} split (seed {cfg.train.seed})")
    click.echo(f"Evaluating {len(target)} images ({counts}) of {data}: {what}")
    with tracking.start_run(f"evaluate-{Path(data).name}-{split}", tags=tags) as run:
        tracking.log_dataset(info)
        tracking.log_params({"evaluated_split": split, "n_images": len(target)})
        result = pipeline.evaluate_model(model_ref, info, out, split=split, echo=click.echo)
        tracking.log_metrics(result["metrics"], prefix=f"{split}_")
        if metadata:
            sources = E.read_metadata(metadata, data)
            table = E.per_source_table(target.paths, target.labels, result["probs"], predictor.meta.threshold,
                                       sources, out)
            click.echo("\nPer source:\n" + E.format_table(table["rows"], ["source", "n", "accuracy", "roc_auc",
                                                                            "flagged_fake"]))
            for row in table["rows"]:
                tracking.log_metrics({f"source.{row['source']}.accuracy": row["accuracy"]})
        if robustness:
            sweep = E.robustness_sweep(predictor, target, out)
            click.echo("\nRobustness:\n" + E.format_table(sweep["rows"], ["perturbation", "roc_auc", "accuracy",
                                                                          "average_precision", "eer"]))
            for row in sweep["rows"]:
                tracking.log_metrics({f"robustness.{row['perturbation']}.roc_auc": row["roc_auc"],
                                      f"robustness.{row['perturbation']}.accuracy": row["accuracy"]})
        if report:
            path = build_report(out, out / "report.html", f"{model_ref} on {data} [{split}]",
                                {k: v for k, v in result["metrics"].items()}, tags=tags)
            click.echo(f"\nReport: {path}")
        tracking.log_artifacts([out], "evaluation")
        click.echo(f"MLflow run {run.info.run_id}")


@main.command()
@click.option("--run", "run_id", required=True, help="MLflow run id (a training, trial or evaluation run).")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Where to write the HTML [default: report_<run>.html].")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
def report(run_id, out_path, tracking_uri) -> None:
    """Write one self-contained HTML page with a run's metrics, tables and figures; log it to the run."""
    from deepfake import tracking
    from deepfake.config import TrackingConfig
    from deepfake.report import build_report

    tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
    info = tracking.run_info(run_id)
    folder = tracking.download_run_artifacts(run_id)
    out = Path(out_path or f"report_{run_id[:8]}.html")
    build_report(folder, out, f"deepfake run {run_id}", info["metrics"], info["params"], info["tags"])
    tracking.log_artifact_to_run(run_id, out, "report")
    click.echo(f"Report written to {out} and logged to run {run_id}")
