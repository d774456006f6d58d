"""One tracked training run: data -> model -> two-phase training -> evaluation -> MLflow.

Used by ``deepfake train`` and by every Optuna trial (which adds a pruning callback and
runs nested under its study's run).

A head-only trial (frozen backbone, no fine-tuning epochs, feature cache on) costs what its training
costs: the head is trained, validated and tested on cached backbone features, and its run logs the
metrics and reports, the head and a reference to the shared backbone (its fingerprint), with no
figures. Its detector is assembled by :func:`assemble` only where it is needed: the best trial of a
study, or a run that is registered.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepfake import atomic, checkpoints, evaluation, plots, tracking, training
from deepfake import config as C
from deepfake import data as D
from deepfake import metrics as MET
from deepfake import model as M
from deepfake.calibration import apply_temperature, fit_temperature
from deepfake.config import Config
from deepfake.errors import DeepfakeError
from deepfake.features import FeatureCache, epoch_indices, weights_fingerprint
from deepfake.inference import (
    META_FILE,
    ModelMeta,
    example_frames,
    pip_requirements,
    pyfunc_artifacts,
    save_detector,
)
from deepfake.input_pipeline import make_dataset, predict_images
from deepfake.tracking.callbacks import EpochLogger

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# A head-only trial's run: the artifact folder with its head and metadata, and the tags that say what it logged.
HEAD_DIR = "head"
MODEL_TAG = "model.logged"  # "head": the head and FINGERPRINT_TAG, no detector yet; "full": a detector (model)
FINGERPRINT_TAG = "backbone.fingerprint"  # the backbone whose cached features the head was trained on
ALSO_DIR = "also"  # the second dataset a run is scored on (deepfake tune --also-data): its split name and folder
PREDICTIONS_FILE = "predictions.csv"  # split, path, label, probability: what the figures are drawn from
HISTORY_FILE = "history.json"
PER_DATASET_FILE = "per_dataset.csv"  # several datasets: each one's val and test metrics at the joint threshold


@dataclass
class RunResult:
    run_id: str
    model_dir: Path
    model_uri: str | None
    threshold: float
    test_metrics: dict[str, float]
    val_metrics: dict[str, float]
    history: dict[str, list[float]]
    out_dir: Path
    dataset: Any = None
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    head_only: bool = False  # a head-only trial: model_uri is None until assemble(run_id)
    also_metrics: dict[str, float] | None = None  # on the second dataset of ``run(also=...)``


def prepare_dataset(cfg: Config, echo: Callable[[str], None] = print, progress: bool = True) -> D.DatasetInfo:
    """Scan and check the dataset, look for duplicates across splits (and drop them with dedupe), then
    audit the classes for shortcuts (format, size, JPEG quality, EXIF, and content with data.content_check).
    Several datasets (``--data A --data B``) are each prepared alone, so every one gets its own duplicates check
    and audit (with its own warnings), and then joined (:mod:`deepfake.mixing`)."""
    from deepfake import mixing

    info = mixing.scan(cfg.data, lambda data_cfg, name: _prepare_one(cfg, data_cfg, name, echo, progress))
    if info.parts:
        echo(mixing.report(info))
    return info


def _prepare_one(cfg: Config, data_cfg: C.DataConfig, name: str, echo: Callable[[str], None],
                 progress: bool) -> D.DatasetInfo:
    """:func:`prepare_dataset` for one dataset (``name``: its name among several, "" alone)."""
    from deepfake import leakage

    info = D.scan_dataset(data_cfg, seed=cfg.train.seed, progress=progress)
    if data_cfg.leakage_check:
        leaks = leakage.find_leaks(info, data_cfg.near_duplicate_distance)
        if data_cfg.dedupe and leaks:
            info = leakage.dedupe(info, leaks)
        info.leaks = leaks
        echo(leakage.report(leaks) + ("  (removed from the later split: data.dedupe)" if data_cfg.dedupe and leaks
                                      else "  (use --set data.dedupe=true to remove them)" if leaks else ""))
    echo(info.report())
    if data_cfg.audit:
        from deepfake import audit

        info.audit = audit.audit_dataset(info, data_cfg.audit_threshold, progress=progress,
                                         content_check=data_cfg.content_check,
                                         content_images=data_cfg.content_check_images, seed=cfg.train.seed)
        echo(audit.report(info.audit))
        for line in info.audit.warnings():
            log.warning("%s%s", f"{name}: " if name else "", line.removeprefix("WARNING: "))
    return info


def evaluate_split(model: keras.Model, split: D.Split, cfg: Config, out_dir: Path, threshold: float, prefix: str,
                   temperature: float = 1.0) -> dict[str, Any]:
    """Predict one split (calibrated, in file order) and write its metrics, confusion matrix, report and curves."""
    probs = apply_temperature(split_probabilities(model, split, cfg), temperature)
    return _evaluate(split, probs, cfg, out_dir, threshold, prefix)


def _evaluate(split: D.Split, probs: np.ndarray, cfg: Config, out_dir: Path, threshold: float, prefix: str,
              figures: bool = True) -> dict[str, Any]:
    """The metrics and files of one split's calibrated probabilities, per picture and per source (video)."""
    names = cfg.data.class_names
    result = evaluation.evaluate_predictions(split.labels, probs, out_dir, class_names=names, threshold=threshold,
                                             prefix=prefix, figures=figures)
    videos = evaluation.evaluate_per_source(split, probs, out_dir, cfg.data.video, class_names=names,
                                            threshold=threshold, prefix=prefix, figures=figures)
    return result | {"probs": probs, "per_video": videos}


def split_probabilities(model: keras.Model, split: D.Split, cfg: Config, ds: Any = None) -> np.ndarray:
    """The model's raw probability of every image of ``split``, in file order: on its pixels (``data.fit: resize``;
    ``ds`` is the split's evaluation dataset when already made) or the mean over its grid of crops (``crop``;
    :func:`deepfake.input_pipeline.predict_images`, which the Predictor uses too)."""
    if cfg.data.fit == "crop":
        return predict_images(model.predict_on_batch, split, cfg.data, seed=cfg.train.seed)
    if ds is None:
        ds = make_dataset(split, cfg.data, training=False, seed=cfg.train.seed)
    return training.predict_probabilities(model, ds)


@dataclass
class Scores:
    """What a run's evaluation found (:func:`_evaluate_and_log`): the temperature and threshold chosen on validation,
    and the evaluated splits (:func:`_evaluate`'s dicts): val, test and the second dataset (``None`` without one)."""

    threshold: float
    temperature: float
    val: dict[str, Any]
    test: dict[str, Any]
    also: dict[str, Any] | None

    def result(self, **rest: Any) -> RunResult:
        """The run's :class:`RunResult` with these scores; ``rest``: the other fields."""
        return RunResult(threshold=self.threshold, test_metrics=self.test["metrics"],
                         val_metrics=self.val["metrics"], files=self.test["files"],
                         also_metrics=self.also["metrics"] if self.also else None, **rest)


def _evaluate_and_log(cfg: Config, raw: Callable[[str, D.Split], np.ndarray], splits: dict[str, D.Split],
                      eval_dir: Path, *, figures: bool, echo: Callable[[str], None]) -> Scores:
    """The second half of a run, the same for a detector and for a head on cached features: ``raw(name, split)``
    gives the model's raw probabilities of a split; the temperature and threshold are chosen on validation, then
    test (and the second dataset, ``splits[ALSO_DIR]``, when there is one) is scored at that threshold and at 0.5.
    The metrics and reports go under ``eval_dir`` (the figures only with ``figures``), the metrics to the active
    run, and the test table is printed."""
    val = splits["val"]
    raw_val = raw("val", val)
    temperature = fit_temperature(val.labels, raw_val) if cfg.train.calibrate else 1.0
    val_probs = apply_temperature(raw_val, temperature)
    threshold = MET.choose_threshold(val.labels, val_probs, method="youden")
    val_eval = evaluation.evaluate_predictions(val.labels, val_probs, eval_dir, class_names=cfg.data.class_names,
                                               threshold=threshold, prefix="val", figures=figures)
    val_eval["probs"] = val_probs
    scored = {name: _evaluate(splits[name], apply_temperature(raw(name, splits[name]), temperature), cfg,
                              eval_dir if name == "test" else eval_dir / ALSO_DIR, threshold, name, figures)
              for name in ("test", ALSO_DIR) if name in splits}
    test_eval, also_eval = scored["test"], scored.get(ALSO_DIR)
    tracking.log_metrics({"threshold": threshold, "temperature": temperature}
                         | {f"val_final_{k}": v for k, v in val_eval["metrics"].items()}
                         | {f"test_{k}": v for k, v in test_eval["metrics"].items()}
                         | {f"test_at_0.5_{k}": v for k, v in test_eval["metrics_at_0.5"].items()})
    echo(MET.format_metrics_table(test_eval["metrics"],
                                  title=f"Test metrics (threshold {threshold:.3f}, chosen on val)"))
    _per_dataset(cfg, {"val": (val, val_probs), "test": (splits["test"], test_eval["probs"])}, threshold, eval_dir,
                 echo)
    videos = test_eval["per_video"]
    if videos is not None:  # a test split of videos (or of face crops of images)
        tracking.log_metrics(videos["metrics"], prefix="test_video_")
        echo(MET.format_metrics_table(videos["metrics"], title=f"test metrics per video ({videos['n']} sources)"))
    if also_eval is not None:  # a second dataset (deepfake tune --also-data): how the model does off its domain
        tracking.log_metrics(also_eval["metrics"], prefix="also_")
        echo(MET.format_metrics_table(also_eval["metrics"], title="Second dataset (--also-data)"))
    return Scores(threshold, temperature, val_eval, test_eval, also_eval)


def _per_dataset(cfg: Config, scored: dict[str, tuple[D.Split, np.ndarray]], threshold: float, eval_dir: Path,
                 echo: Callable[[str], None]) -> None:
    """Several datasets: each one's metrics on val and test at the one threshold (chosen on the joined validation
    split), logged as ``val.NAME.*`` / ``test.NAME.*``, written to ``per_dataset.csv`` and printed."""
    from deepfake import mixing

    found = {name: mixing.per_dataset_metrics(split, probs, threshold) for name, (split, probs) in scored.items()}
    rows = mixing.metric_rows({name: by for name, by in found.items() if by})
    if not rows:
        return
    tracking.log_metrics({f"{split}.{MET.safe_name(name)}.{k}": v for split, by in found.items()
                          for name, m in by.items() for k, v in m.items() if k != "n"})
    columns = ["split", "dataset", "n", "roc_auc", "average_precision", "accuracy", "eer"]
    atomic.write_csv(eval_dir / PER_DATASET_FILE, rows, columns)
    echo(f"Per dataset (accuracy at the threshold {threshold:.3f} chosen on the joined validation split):\n"
         + evaluation.format_table(rows, columns))


def run(
    cfg: Config,
    *,
    dataset: D.DatasetInfo | None = None,
    resume: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    verbose: int = 2,
    echo: Callable[[str], None] = print,
    on_run_start: Callable[[str], None] | None = None,
    lean: bool = False,
    also: D.Split | None = None,
) -> RunResult:
    """Train and evaluate one model as one MLflow run (resumed when ``resume`` finds a checkpoint).

    ``on_run_start`` is called with the run id as soon as the run exists (a tuning trial records it, so
    that the run of a killed trial can be found and ended). ``lean`` (a tuning trial): when the training is
    head-only (:func:`head_only`), the run never builds the detector nor touches pixels once the features
    are cached; it logs the head instead of the model, and no figures (see the module's docstring).
    """
    started = time.time()
    info = dataset or prepare_dataset(cfg, echo, progress=verbose > 0)
    out_dir = Path(cfg.train.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    eval_dir = out_dir / "evaluation"
    previous = checkpoints.read_state(ckpt_dir) if resume else None
    run_id = (previous or {}).get("mlflow_run_id")

    with tracking.start_run(run_name or cfg.tracking.run_name, run_id=run_id, parent_run_id=parent_run_id,
                            tags=tags) as mlrun:
        run_id = mlrun.info.run_id
        if on_run_start is not None:
            on_run_start(run_id)
        if previous is None:
            tracking.log_config(cfg)
            _log_datasets(info)
            cfg.save(out_dir / "config.yaml")
        else:
            tracking.set_tags({"resumed": "true"})
        if lean and previous is None and head_only(cfg):
            return _run_head_only(cfg, info, run_id, callbacks=callbacks, verbose=verbose, echo=echo, also=also,
                                  started=started)
        synthetic = cfg.data.synthetic_fakes.kind != "none"
        if synthetic and cfg.train.feature_cache:
            log.info("data.synthetic_fakes: the feature cache is not used (the synthetic fakes are new every epoch, "
                     "so phase 1 trains on the pixels)")
        train = info.splits["train"]
        points = _mask_points(cfg, train) if synthetic else None
        train_ds = make_dataset(train, cfg.data, training=True, seed=cfg.train.seed, mix=info.shares, keypoints=points)
        val_ds = make_dataset(info.splits["val"], cfg.data, training=False, seed=cfg.train.seed)
        class_weight = (info.class_weights(cfg.data.synthetic_fakes.fraction if synthetic else 0.0)
                        if cfg.data.class_weights else None)

        result = training.train(
            cfg,
            train_ds,
            val_ds,
            ckpt_dir,
            class_weight=class_weight,
            callbacks=[EpochLogger(), *callbacks],
            resume=resume,
            state_extra={"mlflow_run_id": run_id},
            # data.fit: crop trains phase 1 on random crops of the pixels: cached features would fix one crop
            features=(FeatureCache(cfg).provider(info)
                      if cfg.train.feature_cache and cfg.data.fit == "resize" and not synthetic else None),
            on_model_built=tracking.log_weights_info,
            verbose=verbose,
        )
        tracking.set_tags({f"runtime.{k}": v for k, v in result.runtime.items()})
        model = M.as_float32(result.model, cfg)  # evaluate, save and serve in float32

        scores = _evaluate_and_log(
            cfg, lambda name, split: split_probabilities(model, split, cfg, val_ds if name == "val" else None),
            info.splits if also is None else {**info.splits, ALSO_DIR: also}, eval_dir, figures=True, echo=echo)
        history_png = plots.plot_history(result.history, eval_dir / "training_curves.png", result.phase_boundary)
        weights_source = (result.weights_info.source if result.weights_info
                          else (previous or {}).get("weights_source", "unknown"))
        meta = ModelMeta.from_config(cfg, threshold=scores.threshold, temperature=scores.temperature,
                                     weights_source=weights_source)
        model_dir = save_detector(model, meta, out_dir / "model")
        tracking.log_artifacts([eval_dir], "evaluation")
        tracking.log_artifacts([history_png], "evaluation")
        model_uri = (tracking.log_model(pyfunc_artifacts(model_dir), *example_frames(meta), pip_requirements(meta))
                     if cfg.tracking.log_model else None)
        echo(f"MLflow run {run_id}  ({tracking.active_tracking_uri()})")
        return scores.result(run_id=run_id, model_dir=model_dir, model_uri=model_uri, history=result.history,
                             out_dir=out_dir, dataset=info, seconds=time.time() - started)


def _mask_points(cfg: Config, train: D.Split) -> np.ndarray | None:
    """Self-blended fakes: the face points of the training images (:func:`deepfake.synthetic.training_keypoints`)
    and the mask kinds they give (``data.synthetic_fakes.mask``: mesh, else keypoints, else ellipse), logged as
    params ``synthetic.masks.KIND`` (real training images per kind); ``None`` where they are not used."""
    from deepfake import synthetic

    if cfg.data.synthetic_fakes.kind not in ("sbi", "both") or cfg.data.fit == "crop":
        return None
    points = synthetic.training_keypoints(train.paths, train.labels, cfg.data)
    counts = synthetic.mask_counts(points, train.labels)
    tracking.log_params({f"synthetic.masks.{kind}": n for kind, n in counts.items()})
    return points


def _log_datasets(info: D.DatasetInfo) -> None:
    """The run's data lineage: the dataset (its summary, splits as MLflow inputs, audit), or each of several under
    its own name, with each one's share of a training epoch."""
    if not info.parts:
        tracking.log_dataset(info)
        if info.audit is not None:
            tracking.log_audit(info.audit)
        return
    for name, part in info.parts.items():
        tracking.log_dataset(part, name=name)
        if part.audit is not None:
            tracking.log_audit(part.audit, name=name)
    tracking.log_params({f"dataset.{name}.share": round(share, 4) for name, share in info.shares.items()}
                        | {"datasets": ", ".join(info.parts)})


def head_only(cfg: Config) -> bool:
    """Whether ``cfg`` trains the head alone on cached features: feature cache on, phase-1 epochs, and no
    fine-tuning epochs (or no stage to fine-tune). The cached features are the float32 backbone's in
    inference mode (:func:`deepfake.features.compute_features`) and the head is float32, so the head on
    them gives what the (float32) detector gives on the pixels, whatever the training precision."""
    t = cfg.train
    if cfg.data.synthetic_fakes.kind != "none":
        return False  # synthetic fakes are made from the pixels every epoch: no cached features for them
    if cfg.data.fit == "crop":
        return False  # random crops of the pixels every epoch: cached features would fix one crop per image
    return t.feature_cache and t.epochs > 0 and not (t.fine_tune_epochs > 0 and t.fine_tune_stages > 0)


def _run_head_only(cfg: Config, info: D.DatasetInfo, run_id: str, *, callbacks: Sequence[keras.callbacks.Callback],
                   verbose: int, echo: Callable[[str], None], started: float,
                   also: D.Split | None = None) -> RunResult:
    """The rest of :func:`run` for a lean head-only run, inside its MLflow run: head training and the
    val/test predictions on cached features, metrics and reports, the head and the backbone's fingerprint."""
    out_dir = Path(cfg.train.output_dir)
    eval_dir = out_dir / "evaluation"
    ckpt_dir = out_dir / "checkpoints"
    val, test = info.splits["val"], info.splits["test"]
    found: dict[str, Any] = {}

    scored = info if also is None else replace(info, splits={**info.splits, ALSO_DIR: also})

    def features() -> tuple:
        found["features"] = cached = FeatureCache(cfg).head_features(scored, tuple(scored.splits))
        tracking.log_weights_info(cached.weights_info)
        x_train, y_train = cached.arrays["train"], np.asarray(info.splits["train"].labels, dtype="float32")
        if info.shares and len(info.splits["train"].dataset_names()) > 1:  # each dataset its share of the epoch
            keep = epoch_indices(info.splits["train"], info.shares, cfg.train.seed)
            x_train, y_train = x_train[keep], y_train[keep]
        return x_train, y_train, cached.arrays["val"], np.asarray(val.labels, dtype="float32")

    result = training.train_head(
        cfg, features, ckpt_dir, class_weight=info.class_weights() if cfg.data.class_weights else None,
        callbacks=[EpochLogger(), *callbacks], state_extra={"mlflow_run_id": run_id}, verbose=verbose,
    )
    cached, head = found["features"], result.model
    scores = _evaluate_and_log(cfg, lambda name, _: training.predict_features(head, cached.arrays[name]),
                               scored.splits, eval_dir, figures=False, echo=echo)
    atomic.write_csv(eval_dir / PREDICTIONS_FILE, [
        {"split": name, "path": path, "label": int(y), "probability": repr(float(p))}
        for name, split, probs in (("val", val, scores.val["probs"]), ("test", test, scores.test["probs"]))
        for path, y, p in zip(split.paths, split.labels, probs, strict=True)])
    atomic.write_text(eval_dir / HISTORY_FILE, json.dumps({"history": result.history,
                                                          "phase_boundary": result.phase_boundary}))
    meta = ModelMeta.from_config(cfg, threshold=scores.threshold, temperature=scores.temperature,
                                 weights_source=cached.weights_info.source)
    meta_path = meta.save(ckpt_dir / META_FILE)
    tracking.log_artifacts([eval_dir], "evaluation")
    tracking.log_artifacts([result.best_path, meta_path], HEAD_DIR)
    tracking.set_tags({f"runtime.{k}": v for k, v in result.runtime.items()}
                      | {MODEL_TAG: "head", FINGERPRINT_TAG: cached.fingerprint})
    return scores.result(run_id=run_id, model_dir=ckpt_dir, model_uri=None, history=result.history, out_dir=out_dir,
                         dataset=info, seconds=time.time() - started, head_only=True)


def assemble(run_id: str, *, echo: Callable[[str], None] = print) -> str:
    """The model URI of the detector that run ``run_id`` trained: its logged model, assembled first when the
    run is a head-only trial's (which logged its head and the backbone's fingerprint instead).

    The backbone is rebuilt from the run's configuration (seeded as in training) and must have the
    fingerprint of the one whose cached features the head was trained on; the head's weights go on it, and
    the detector is logged to the run as its model, with the figures the trial skipped (from its logged
    predictions and history). Once per run: afterwards the run counts as one that logged its model.
    """
    import keras

    tags = tracking.run_info(run_id)["tags"]
    if tags.get(MODEL_TAG) != "head":
        return tracking.run_model_uri(run_id)
    head_dir = tracking.download_run_artifacts(run_id, HEAD_DIR)
    logged_eval = tracking.download_run_artifacts(run_id, "evaluation")
    cfg = C.from_dict(C.load_yaml(tracking.download_run_artifacts(run_id, "config.yaml")))
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        training.set_seeds(cfg.train.seed)
        model = M.build_model(cfg)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    fingerprint = weights_fingerprint(model)
    if fingerprint != tags.get(FINGERPRINT_TAG):
        raise DeepfakeError(
            f"run {run_id}: cannot assemble its detector: the {cfg.model.backbone} backbone built from its "
            f"configuration (weights {cfg.model.weights}) is not the one its head was trained on (fingerprint "
            f"{fingerprint}, the run's is {tags.get(FINGERPRINT_TAG)}); build it where the trial ran, with the same "
            "weights available")
    M.head_of(model).set_weights(M.load_keras_model(head_dir / checkpoints.HEAD_FILE).get_weights())
    meta = ModelMeta.load(head_dir / META_FILE)
    work = Path(tempfile.mkdtemp(prefix="deepfake-assemble-"))
    try:
        model_dir = save_detector(model, meta, work / "model")
        figures = _figures(logged_eval, work / "evaluation", meta)
        with tracking.reopened_run(run_id):
            model_uri = tracking.log_model(pyfunc_artifacts(model_dir), *example_frames(meta), pip_requirements(meta))
            tracking.log_artifacts(figures, "evaluation")
            tracking.set_tags({MODEL_TAG: "full"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    echo(f"Assembled the detector of head-only run {run_id}: {model_uri}")
    return model_uri


def _figures(logged_eval: Path, out_dir: Path, meta: ModelMeta) -> list[Path]:
    """The figures of a head-only run, from its logged predictions and history."""
    rows: dict[str, tuple[list[int], list[float]]] = {}
    with (logged_eval / PREDICTIONS_FILE).open(newline="") as f:
        for row in csv.DictReader(f):
            labels, probs = rows.setdefault(row["split"], ([], []))
            labels.append(int(row["label"]))
            probs.append(float(row["probability"]))
    figures = []
    for name, (labels, probs) in rows.items():
        figures += evaluation.draw_figures(labels, probs, out_dir, class_names=meta.class_names,
                                           threshold=meta.threshold, prefix=name)
    logged = json.loads((logged_eval / HISTORY_FILE).read_text())
    figures.append(plots.plot_history(logged["history"], out_dir / "training_curves.png", logged["phase_boundary"]))
    return figures
