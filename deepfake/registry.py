"""The Model Registry policy: register a run's detector, and move ``@champion`` only to a better one.

A new version and the current champion are evaluated on the same test split; the alias moves when the
new version's ROC-AUC is higher (or when forced). The comparison is printed and recorded as
``comparison.*`` tags of the new version, ``comparison.reason`` last: a registration interrupted before
its comparison was recorded is completed by the next registration of the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepfake import data as D
from deepfake import evaluation, tracking
from deepfake.config import Config
from deepfake.inference import load_predictor

if TYPE_CHECKING:
    from deepfake.tuning import StudyResult

COMPARISON_DONE = "comparison.reason"  # promote() writes this version tag last: the comparison is complete
RUN_METRICS_AS_TAGS = ("test_", "val_final_")  # a run's metrics that its registered version carries as tags


def evaluate_model(model_uri: str, info: D.DatasetInfo, out_dir: str | Path, *,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """A logged or registered detector's metrics on ``info``'s test split."""
    predictor = load_predictor(tracking.local_model(model_uri))
    return evaluation.evaluate_predictor(predictor, info, out_dir, model_ref=model_uri, echo=echo)


def _silent(line: str) -> None:
    """An ``echo`` that prints nothing: a comparison prints one line of its own."""


def register_run(
    run_id: str,
    cfg: Config,
    info: D.DatasetInfo,
    *,
    model_uri: str | None = None,
    tags: dict[str, Any] | None = None,
    out_dir: str | Path = "outputs/registry",
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Register the model that run ``run_id`` logged (``model_uri``, by default ``runs:/<run_id>/model``)
    with the run's test and final validation metrics as version tags; promote it if it wins. A head-only
    trial's run, which logged its head only, gets its detector assembled first."""
    from deepfake import pipeline

    run = tracking.run_info(run_id)
    metrics = run["metrics"]
    if model_uri is None and run["tags"].get(pipeline.MODEL_TAG) == "head":
        model_uri = pipeline.assemble(run_id, echo=echo)
    version_tags = {k: round(v, 6) for k, v in metrics.items() if k.startswith(RUN_METRICS_AS_TAGS)}
    version_tags |= (tags or {}) | {"source_run_id": run_id}
    return register_and_promote(model_uri or tracking.run_model_uri(run_id), cfg, info, version_tags=version_tags,
                                out_dir=out_dir, force=force, echo=echo)


def register_study_best(result: StudyResult, cfg: Config, *,
                        echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Register the best model of a finished study (a :class:`deepfake.tuning.StudyResult`) and promote it
    if it wins; the comparison is also recorded on the study's parent run. None when no trial completed."""
    if not result.best_model_uri:
        return None
    with tracking.outages_reported("; the study is kept: run the same command again to register its best model"):
        info = D.scan_dataset(cfg.data, seed=cfg.train.seed)
        record = register_run(result.best_run_id, cfg, info, model_uri=result.best_model_uri,
                              tags={"study": result.study_name, "trial": result.best_trial},
                              out_dir=Path(cfg.train.output_dir) / result.study_name / "registry", echo=echo)
        with tracking.start_run(run_id=result.parent_run_id):
            tracking.log_dict(record, "registry/comparison.json")
            tracking.set_tags({f"registry.{k}": v for k, v in record.items()})
    return record


def register_and_promote(
    model_uri: str,
    cfg: Config,
    info: D.DatasetInfo,
    *,
    version_tags: dict[str, Any] | None = None,
    out_dir: str | Path = "outputs/registry",
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Register ``model_uri`` and move the ``champion`` alias to it if it beats the champion.

    Both models are evaluated on the same test split; the comparison is printed and recorded
    as tags on the new version (and returned, for the caller to log on its run).

    Idempotent per run: a run already registered keeps its version, and its recorded comparison
    is returned without comparing again (unless ``force``). A registration interrupted before its
    comparison was recorded is completed.
    """
    name = cfg.tracking.registered_model
    version = tracking.register_model(model_uri, name, tags=version_tags)
    tags = tracking.version_info(name, version)["tags"]
    if COMPARISON_DONE in tags and not force:
        record = _recorded_comparison(name, tags)
        verdict = "promoted to @champion" if record["promoted"] else "not promoted"
        echo(f"{name} v{version}: already registered for this run ({verdict}: {record.get('reason')}); nothing to do")
        return record
    return promote(name, version, info, out_dir=out_dir, force=force, echo=echo)


def _recorded_comparison(name: str, tags: dict[str, str]) -> dict[str, Any]:
    """The comparison record that :func:`promote` stored as ``comparison.*`` version tags."""
    record: dict[str, Any] = {"name": name}
    record |= {k[len("comparison."):]: v for k, v in tags.items() if k.startswith("comparison.")}
    record["promoted"] = record.get("promoted") == "True"
    if record.get("champion_version") in (None, "None"):
        record["champion_version"] = None
    for key in ("challenger_test_roc_auc", "champion_test_roc_auc"):
        if key in record:
            record[key] = float(record[key])
    return record


def promote(name: str, version: str, info: D.DatasetInfo, *, out_dir: str | Path = "outputs/registry",
            force: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Compare ``version`` with the current champion on ``info``'s test split; promote if better."""
    out_dir = Path(out_dir)
    current = tracking.alias_version(name)
    challenger = evaluate_model(tracking.version_uri(name, version), info, out_dir / f"v{version}", echo=_silent)
    new_auc = challenger["metrics"]["roc_auc"]
    record: dict[str, Any] = {"name": name, "version": version, "challenger_test_roc_auc": new_auc,
                              "champion_version": current, "test_data": info.root}
    if current is None or current == version:
        promoted, reason = True, "no champion yet" if current is None else "already champion"
    else:
        champion = evaluate_model(tracking.version_uri(name, current), info, out_dir / f"v{current}", echo=_silent)
        old_auc = champion["metrics"]["roc_auc"]
        record["champion_test_roc_auc"] = old_auc
        promoted = force or new_auc > old_auc
        reason = ("forced" if force and not new_auc > old_auc else
                  f"test ROC-AUC {new_auc:.4f} {'>' if new_auc > old_auc else '<='} champion v{current} {old_auc:.4f}")
    if promoted:
        tracking.set_alias(name, version)
    record.update(promoted=promoted, reason=reason)
    # The alias first, then the tags, "reason" (COMPARISON_DONE) last: a kill in between leaves the version
    # without a complete comparison, and the next registration of the run completes it.
    tracking.set_version_tags(name, version, {f"comparison.{k}": v for k, v in record.items() if k != "name"})
    verdict = "promoted to @champion" if promoted else "not promoted; champion stays"
    echo(f"{name} v{version}: {verdict} ({reason})")
    return record


def register_export(folder: str | Path, name: str, source_ref: str, check: dict[str, Any]) -> tuple[str, str | None]:
    """Log an exported detector (:mod:`deepfake.export`) as a pyfunc in a run of its own and register it as a
    version of ``name`` beside the Keras ones, tagged ``format`` and ``exported_from``; an export of
    ``models:/NAME@ALIAS`` gets the alias ``ALIAS-FORMAT`` (say ``champion-openvino-int8``). Never moves
    ``@champion``. Returns ``(version, alias or None)``."""
    from deepfake.inference import META_FILE, ModelMeta, example_frames, pip_requirements, pyfunc_artifacts

    meta = ModelMeta.load(Path(folder) / META_FILE)
    figures = {f"export.{k}": v for k, v in check.items() if isinstance(v, (int, float)) and v is not None}
    with tracking.start_run(f"export-{meta.format}", tags={"export.format": meta.format,
                                                           "export.source": source_ref}):
        tracking.log_metrics(figures)
        model_uri = tracking.log_model(pyfunc_artifacts(folder), *example_frames(meta), pip_requirements(meta))
    version = tracking.register_model(model_uri, name, tags={"format": meta.format, "exported_from": source_ref})
    alias = None
    if source_ref.startswith(f"models:/{name}@"):
        alias = f"{source_ref.split('@', 1)[1]}-{meta.format}"
        tracking.set_alias(name, version, alias)
    return version, alias
