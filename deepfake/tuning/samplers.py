"""Samplers and pruners named in the search space, and the per-trial seeding of the sampler."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from deepfake.errors import DeepfakeError, first_line

PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}


# Sampler and pruner arguments that must be integers of at least this much. Optuna checks some of them
# only while a study runs (a negative TPE n_startup_trials, say), or not at all.
INTEGER_ARGS = {
    "n_startup_trials": 0, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1, "n_ei_candidates": 1,
    "min_resource": 1, "max_resource": 1, "reduction_factor": 2, "min_early_stopping_rate": 0,
}


def _make(kinds: dict[str, type], what: str, spec: Any, default: str, where: str, **defaults: Any):
    if not isinstance(spec, dict):
        raise DeepfakeError(f"{where}: '{what}' must be a mapping such as {{type: {default}}}")
    kind = spec.get("type", default)
    if kind not in kinds:
        raise DeepfakeError(f"{where}: {what} type '{kind}' is unknown; use one of {', '.join(kinds)}")
    args = {k: v for k, v in spec.items() if k != "type"}
    if "seed" in args and "seed" in defaults:
        raise DeepfakeError(f"{where}: {what} seed is not an option; every trial's sampler is seeded from "
                            "train.seed (--seed), the study name and the trial number")
    for name, value in args.items():
        minimum = INTEGER_ARGS.get(name)
        if minimum is None or (value == "auto" and name in ("min_resource", "max_resource")):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise DeepfakeError(f"{where}: {what} {name} must be an integer >= {minimum} (got {value!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return kinds[kind](**defaults, **args)
    except (TypeError, ValueError) as exc:
        raise DeepfakeError(f"{where}: {what} '{kind}': {first_line(exc)}") from None


def make_pruner(spec: dict[str, Any], where: str = "search space") -> optuna.pruners.BasePruner:
    return _make(PRUNERS, "pruner", spec, "median", where)


def make_sampler(spec: dict[str, Any], seed: int, where: str = "search space") -> optuna.samplers.BaseSampler:
    return _make(SAMPLERS, "sampler", spec, "tpe", where, seed=seed)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """The search space's sampler, made afresh for every trial with a seed derived from the study name,
    ``train.seed`` and the trial number.

    A sampler seeded once per worker with ``train.seed`` makes every restarted or additional worker replay
    the same parameters. Trial numbers are unique within a study (the storage assigns them), so no two
    trials - of any worker - draw with the same seed, and a study's draws stay reproducible. (Samplers keep
    no state between trials besides their random generator: the history is read from the study.)
    """

    def __init__(self, spec: dict[str, Any], study_name: str, seed: int):
        self._spec = spec
        self._base = f"{study_name}\0{seed}"
        self._sampler = make_sampler(spec, seed=self.seed_for(-1))

    def seed_for(self, trial_number: int) -> int:
        digest = hashlib.sha256(f"{self._base}\0{trial_number}".encode()).digest()
        return int.from_bytes(digest[:4], "big")

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._sampler = make_sampler(self._spec, seed=self.seed_for(trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, optuna.distributions.BaseDistribution]) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: optuna.distributions.BaseDistribution) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()
