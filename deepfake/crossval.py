"""Leave-one-source-out cross-validation (``deepfake crossval``): the field's protocol for unseen generators.

For every source of fakes (a generator, a manipulation method: a column of the dataset's metadata CSV) one
detector is trained without that source's fakes (training and validation splits) and scored on that source's
fakes, from every split since none was seen, against the test split's real images, as in the CNNDetection,
UniversalFakeDetect and NPR tables. One parent MLflow run holds a nested run per held-out source and the
table (ROC-AUC, AP, accuracy at each detector's threshold) with a bar chart.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepfake import atomic, pipeline, plots, tracking
from deepfake import data as D
from deepfake import evaluation as E
from deepfake import metrics as MET
from deepfake.config import Config
from deepfake.errors import DeepfakeError

COLUMNS = ["held_out", "n_fake", "n_real", "roc_auc", "average_precision", "accuracy", "in_domain_roc_auc"]
DATASET = "dataset"  # --by dataset: leave one whole dataset (of several --data) out
CSV_FILE = "crossval.csv"  # the table, a row per held-out source and their mean (COLUMNS)


def source_of(info: D.DatasetInfo, table: dict[str, str]) -> dict[str, str]:
    """The source of every picture of ``info`` (by its source file: a video's frames share it)."""
    out = {}
    for split in info.splits.values():
        out.update(zip(split.paths, E.sources_for(split.group_ids(), table), strict=True))
    return out


def fake_sources(info: D.DatasetInfo, sources: dict[str, str]) -> list[str]:
    """The sources of fake pictures, sorted."""
    return sorted({sources[p] for split in info.splits.values()
                   for p, y in zip(split.paths, split.labels, strict=True) if y == 1})


def fold(info: D.DatasetInfo, sources: dict[str, str], held_out: str) -> D.DatasetInfo:
    """``info`` without ``held_out``'s fakes in train and val; its test split: the test reals and every fake of
    ``held_out`` (from any split, as none was trained on)."""
    def held(split: D.Split) -> list[int]:
        return [i for i, (p, y) in enumerate(zip(split.paths, split.labels, strict=True))
                if y == 1 and sources[p] == held_out]

    splits = {name: split.subset(sorted(set(range(len(split))) - set(held(split))))
              for name, split in info.splits.items() if name != "test"}
    test = info.splits["test"]
    pieces = [test.subset([i for i, y in enumerate(test.labels) if y == 0]),
              *(split.subset(held(split)) for split in info.splits.values())]
    splits["test"] = D.Split([p for s in pieces for p in s.paths], [y for s in pieces for y in s.labels],
                             [g for s in pieces for g in s.group_ids()] if test.groups else [],
                             [d for s in pieces for d in s.datasets] if test.datasets else [])
    return D.DatasetInfo(root=info.root, layout=info.layout, class_names=list(info.class_names), splits=splits,
                         notes=[*info.notes, f"leave-one-source-out: fakes of {held_out!r} held out of training"],
                         synthetic_fraction=info.synthetic_fraction, shares=dict(info.shares))


def in_domain_test(info: D.DatasetInfo, sources: dict[str, str], held_out: str) -> D.Split:
    """The original test split without ``held_out``'s fakes: the sources the fold's detector trained on."""
    test = info.splits["test"]
    return test.subset([i for i, (p, y) in enumerate(zip(test.paths, test.labels, strict=True))
                        if y == 0 or sources[p] != held_out])


def run(cfg: Config, *, by: str = "source", metadata: str | Path | None = None,
        only: Sequence[str] = (), echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Leave each fake source of ``cfg.data.path`` out in turn (``only``: just these); see the module's docstring.
    ``by="dataset"``: leave each of several datasets (``--data A --data B``) out in turn, trained on the others and
    tested on its test split (the cross-dataset protocol of the face-forgery literature)."""
    root = Path(cfg.data.path)
    if by == DATASET:
        info, held, make_fold = _by_dataset(cfg, only, echo)
    else:
        table_path = Path(metadata) if metadata else root / E.METADATA_FILE
        if not table_path.is_file():
            raise DeepfakeError(f"--metadata {table_path}: no such file; crossval needs a CSV with columns path,{by} "
                                f"(give --metadata, or put {E.METADATA_FILE} in the dataset folder)")
        info = pipeline.prepare_dataset(cfg, echo)
        if "test" not in info.splits:
            raise DeepfakeError(f"--data {root}: crossval needs a test split")
        sources = source_of(info, E.read_metadata(table_path, root, column=by))
        found = fake_sources(info, sources)
        if len(found) < 2:
            raise DeepfakeError(f"--by {by}: the fakes of {root} have {len(found)} {by}(s); leaving one out needs two")
        held = _chosen(found, only, by)

        def make_fold(source: str) -> tuple[D.DatasetInfo, D.Split]:
            return fold(info, sources, source), in_domain_test(info, sources, source)

    echo(f"Leave-one-{by}-out on {info.root}: {len(held)} folds ({', '.join(held)})")

    out = Path(cfg.train.output_dir) / f"crossval-{by}"
    name = f"crossval-{'+'.join(info.parts) if info.parts else root.resolve().name}-by-{by}"
    with tracking.start_run(name, tags={"deepfake.role": "crossval", "crossval.by": by}) as parent:
        parent_id = parent.info.run_id
        tracking.log_config(cfg)
        tracking.log_dataset(info)
        tracking.log_params({"crossval.by": by, "crossval.folds": len(held), "crossval.held_out": ", ".join(held)})
    rows = []
    for i, source in enumerate(held, 1):
        echo(f"\n=== fold {i}/{len(held)}: without {by} {source!r} ===")
        fcfg, slug = copy.deepcopy(cfg), MET.safe_name(source)
        fcfg.train.output_dir = str(out / slug)
        fcfg.data.leakage_check = fcfg.data.audit = False  # done once above, on the whole dataset
        fold_info, in_domain = make_fold(source)
        result = pipeline.run(fcfg, dataset=fold_info, parent_run_id=parent_id,
                              run_name=f"without-{slug}", tags={"crossval.held_out": source}, echo=echo)
        test = result.dataset.splits["test"]
        m = result.test_metrics
        row = {"held_out": source, "n_fake": int(np.sum(test.labels)), "n_real": int(len(test) - np.sum(test.labels)),
               "roc_auc": m["roc_auc"], "average_precision": m["average_precision"], "accuracy": m["accuracy"],
               "in_domain_roc_auc": _in_domain(result, in_domain)}
        rows.append(row)
        echo(f"[{source}] held out: ROC-AUC {row['roc_auc']:.4f}, AP {row['average_precision']:.4f}; "
             f"in domain {row['in_domain_roc_auc']:.4f}")
    mean = {"held_out": "mean", "n_fake": sum(r["n_fake"] for r in rows), "n_real": rows[0]["n_real"]}
    for key in ("roc_auc", "average_precision", "accuracy", "in_domain_roc_auc"):
        values = [r[key] for r in rows if not math.isnan(r[key])]
        mean[key] = float(np.mean(values)) if values else float("nan")
    rows.append(mean)
    out.mkdir(parents=True, exist_ok=True)
    table = atomic.write_csv(out / CSV_FILE, rows, COLUMNS)
    plot = plots.plot_bar([r["held_out"] for r in rows], [r["roc_auc"] for r in rows], out / "crossval.png",
                          title=f"ROC-AUC on each held-out {by} (vs test reals)", ylabel="ROC-AUC", reference=0.5)
    text = E.format_table(rows, COLUMNS)
    with tracking.start_run(run_id=parent_id):
        for r in rows:
            key = f"held_out.{MET.safe_name(r['held_out'])}"
            tracking.log_metrics({f"{key}.roc_auc": r["roc_auc"], f"{key}.average_precision": r["average_precision"]})
        tracking.log_metrics({"mean_held_out_roc_auc": mean["roc_auc"]})
        tracking.log_artifacts([table, plot], "crossval")
    echo(f"\nLeave-one-{by}-out (each detector's threshold chosen on its validation split):\n{text}")
    echo(f"MLflow run {parent_id}")
    return {"rows": rows, "run_id": parent_id, "files": [str(table), str(plot)]}


def _chosen(found: Sequence[str], only: Sequence[str], by: str) -> list[str]:
    """The sources (or datasets) to hold out: all found, or those of ``only`` (each must be among them)."""
    if not only:
        return list(found)
    missing = sorted(set(only) - set(found))
    if missing:
        raise DeepfakeError(f"--source {', '.join(missing)}: no fakes with that {by}; there are " + ", ".join(found))
    return [s for s in found if s in only]


def _by_dataset(cfg: Config, only: Sequence[str], echo: Callable[[str], None]):
    """``--by dataset``: the joined datasets, the ones to hold out, and ``make_fold(name) -> (fold, in-domain
    test split)`` (:func:`deepfake.mixing.leave_out`)."""
    from deepfake import mixing

    if len(cfg.data.dataset_paths()) < 2:
        raise DeepfakeError("--by dataset: give two or more --data folders; each is held out of training in turn")
    info = pipeline.prepare_dataset(cfg, echo)
    held = _chosen(list(info.parts), only, DATASET)

    def make_fold(name: str) -> tuple[D.DatasetInfo, D.Split]:
        fold_info, _, in_domain = mixing.leave_out(info, name)
        return fold_info, in_domain

    return info, held, make_fold


def _in_domain(result: pipeline.RunResult, split: D.Split) -> float:
    """The fold detector's ROC-AUC on the test pictures of the sources it trained on."""
    from deepfake.inference import load_predictor

    if len(set(split.labels)) < 2:
        return float("nan")
    probs = load_predictor(result.model_dir).predict_split(split)
    return MET.compute_metrics(split.labels, probs)["roc_auc"]

