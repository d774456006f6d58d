"""Several datasets trained on at once (``--data A --data B``): each scanned, split and checked alone, then joined.

Each dataset is split as it would be alone (by source video where its pictures are frames or face crops), and
its train, val and test splits are joined into one of each; every picture keeps the name of its dataset
(:attr:`deepfake.data.Split.datasets`). A training epoch gives each dataset its share (``data.mix``; equal by
default, so a small dataset is not drowned by a large one: :func:`deepfake.data.epoch_counts`), validation and
test are scored over all and per dataset (:func:`per_dataset_metrics`), with one threshold chosen on the joined
validation split. ``deepfake crossval --by dataset`` leaves one whole dataset out (:func:`leave_out`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepfake import data as D
from deepfake import metrics as MET
from deepfake.config import DataConfig
from deepfake.errors import DeepfakeError

SEPARATOR = " + "  # between the roots of joined datasets (DatasetInfo.root)


def dataset_names(paths: Sequence[str]) -> list[str]:
    """A short, unique name per dataset folder: its folder name, numbered when two share one."""
    names: list[str] = []
    for path in paths:
        base = Path(path).expanduser().resolve().name or "dataset"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def shares(cfg: DataConfig, names: Sequence[str]) -> dict[str, float]:
    """Each dataset's share of a training epoch (``data.mix``, normalised; equal when not given)."""
    weights = list(cfg.mix) if cfg.mix else [1.0] * len(names)
    if len(weights) != len(names):
        raise DeepfakeError(f"data.mix gives {len(weights)} share(s) for {len(names)} dataset(s); give one per --data")
    total = float(sum(weights))
    return {name: float(w) / total for name, w in zip(names, weights, strict=True)}


def part_config(cfg: DataConfig, path: str) -> DataConfig:
    """The data configuration of one of several datasets: ``cfg`` with only ``path``."""
    return dataclasses.replace(cfg, path=path, extra_paths=[], mix=[])


def join(parts: dict[str, D.DatasetInfo], mix: dict[str, float]) -> D.DatasetInfo:
    """One :class:`~deepfake.data.DatasetInfo` of several scanned datasets: their splits joined, each picture tagged
    with its dataset's name; ``parts`` and ``mix`` kept (per-dataset reports, audits, lineage and epoch shares)."""
    first = next(iter(parts.values()))
    names = first.class_names
    for name, info in parts.items():
        if info.class_names != names:
            raise DeepfakeError(f"dataset {name}: class folders {info.class_names} differ from {names}")
    splits: dict[str, D.Split] = {}
    for split_name in D.SPLITS:
        pieces = [(name, info.splits[split_name]) for name, info in parts.items() if split_name in info.splits]
        if not pieces:
            continue
        grouped = any(split.groups for _, split in pieces)
        splits[split_name] = D.Split(
            [p for _, s in pieces for p in s.paths], [y for _, s in pieces for y in s.labels],
            [g for _, s in pieces for g in s.group_ids()] if grouped else [],
            [name for name, s in pieces for _ in range(len(s))])
    fractions = {info.synthetic_fraction for info in parts.values()}
    return D.DatasetInfo(
        root=SEPARATOR.join(info.root for info in parts.values()),
        layout="+".join(dict.fromkeys(info.layout for info in parts.values())),
        class_names=list(names), splits=splits,
        skipped=[s for info in parts.values() for s in info.skipped],
        notes=[f"{name}: {n}" for name, info in parts.items() for n in info.notes],
        leaks=[leak for info in parts.values() for leak in info.leaks],
        synthetic_fraction=max(fractions), parts=dict(parts), shares=dict(mix))


def scan(cfg: DataConfig, prepare: Callable[[DataConfig, str], D.DatasetInfo]) -> D.DatasetInfo:
    """Every dataset of ``cfg`` prepared alone (``prepare(part_cfg, name)``: scan, duplicates, audit) and joined;
    one dataset is returned as ``prepare`` gives it."""
    paths = cfg.dataset_paths()
    if len(paths) < 2:
        return prepare(cfg, "")
    names = dataset_names(paths)
    parts = {name: prepare(part_config(cfg, path), name) for name, path in zip(names, paths, strict=True)}
    return join(parts, shares(cfg, names))


def report(info: D.DatasetInfo) -> str:
    """The joined datasets at a glance: pictures per split and each dataset's share of a training epoch."""
    lines = [f"{len(info.parts)} datasets trained on together (each split by itself, the splits joined):"]
    lines.append(f"  {'dataset':<24} {'train':>6} {'val':>6} {'test':>6}  epoch share")
    for name in info.parts:
        counts = [len(info.splits[s].by_dataset().get(name, [])) if s in info.splits else 0 for s in D.SPLITS]
        lines.append(f"  {name:<24} {counts[0]:>6} {counts[1]:>6} {counts[2]:>6}  {info.shares.get(name, 0):.0%}")
    return "\n".join(lines)


def per_dataset_metrics(split: D.Split, probs: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """ROC-AUC, AP and the rest (:func:`deepfake.metrics.compute_metrics`) of each dataset's pictures of a joined
    split, at the one ``threshold`` chosen on the joined validation split (``{}`` for one dataset)."""
    groups = split.by_dataset()
    if len(groups) < 2:
        return {}
    probs = np.asarray(probs, dtype="float64")
    labels = np.asarray(split.labels, dtype=int)
    out = {}
    for name, positions in groups.items():
        idx = np.asarray(positions)
        out[name] = {"n": float(len(idx))} | MET.compute_metrics(labels[idx], probs[idx], threshold=threshold)
    return out


def metric_rows(scored: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """``{split: {dataset: metrics}}`` -> table rows (split, dataset, n, roc_auc, average_precision, accuracy,
    eer)."""
    return [{"split": split, "dataset": name, "n": int(m["n"]), "roc_auc": m.get("roc_auc", float("nan")),
             "average_precision": m.get("average_precision", float("nan")), "accuracy": m.get("accuracy"),
             "eer": m.get("eer", float("nan"))}
            for split, by_name in scored.items() for name, m in by_name.items()]


def leave_out(info: D.DatasetInfo, held_out: str) -> tuple[D.DatasetInfo, D.Split, D.Split]:
    """``deepfake crossval --by dataset``: ``(fold, held-out test, in-domain test)``. The fold trains and validates
    on every dataset but ``held_out`` (their shares renormalised) and its test split is ``held_out``'s test split,
    a kind of data it never saw; the in-domain test split is the other datasets' test pictures."""
    if held_out not in info.parts:
        raise DeepfakeError(f"--source {held_out}: no such dataset; the datasets are {', '.join(info.parts)}")
    rest = {name: part for name, part in info.parts.items() if name != held_out}
    kept = {name: info.shares.get(name, 0.0) for name in rest}
    total = sum(kept.values()) or 1.0
    trained = join(rest, {name: w / total for name, w in kept.items()}) if len(rest) > 1 else _tagged(rest)
    held_test = _tagged({held_out: info.parts[held_out]}).splits["test"]
    fold = dataclasses.replace(trained, splits={**trained.splits, "test": held_test},
                               notes=[*trained.notes, f"leave-one-dataset-out: {held_out} held out of training"])
    return fold, held_test, trained.splits["test"]


def _tagged(parts: dict[str, D.DatasetInfo]) -> D.DatasetInfo:
    """A single dataset whose pictures carry its name (what :func:`join` gives each of several)."""
    (name, info), = parts.items()
    splits = {s: dataclasses.replace(split, datasets=[name] * len(split)) for s, split in info.splits.items()}
    return dataclasses.replace(info, splits=splits, parts={}, shares={})
