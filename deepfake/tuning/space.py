"""The search space: one YAML file of config keys mapped to distributions, plus the sampler and pruner.

Validated when read (:func:`load_search_space`), so that a mistake stops before a study or run exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from deepfake import config as C
from deepfake.errors import DeepfakeError, first_line
from deepfake.tuning.attributes import BASELINE_ATTR
from deepfake.tuning.samplers import make_pruner, make_sampler

DISTRIBUTION_KEYS = {"type", "low", "high", "log", "step", "choices"}


@dataclass
class SearchSpace:
    params: dict[str, dict[str, Any]]
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one value per parameter; returns ``{"train.learning_rate": 3e-4, ...}``."""
        values = {}
        for key, spec in self.params.items():
            kind = spec["type"]
            if kind == "float":
                values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False),
                                                  step=spec.get("step"))
            elif kind == "int":
                values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False),
                                                step=spec.get("step", 1))
            else:
                values[key] = trial.suggest_categorical(key, spec["choices"])
        return values

    def baseline(self, cfg: C.Config) -> dict[str, Any]:
        """The configuration's own values of the parameters, where the space holds them (a value outside a
        range, off its step or not among the choices is left to the sampler). A one-element list, such as
        ``model.head_units: [256]``, is the choice ``256``."""
        flat = cfg.flat()
        values: dict[str, Any] = {}
        for key, spec in self.params.items():
            value = flat[key]
            if spec["type"] == "categorical":
                if value in spec["choices"]:
                    values[key] = value
                elif isinstance(value, list) and len(value) == 1 and value[0] in spec["choices"]:
                    values[key] = value[0]
            elif _in_range(value, spec):
                values[key] = value
        return values


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate the search-space YAML (keys must be config options): a file, or a shipped one by name."""
    path = C.find_file(path, folder="")
    if not path.is_file():
        raise DeepfakeError(f"--search-space {path}: no such file; give a YAML file or a shipped search space: "
                            + ", ".join(C.shipped_names("", prefix="search_space")))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise DeepfakeError(f"--search-space {path}: not valid YAML") from None
    unknown_sections = set(raw) - {"params", "sampler", "pruner"}
    if unknown_sections or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise DeepfakeError(f"--search-space {path}: needs a non-empty 'params' mapping (and optional sampler, pruner)"
                            + (f"; unknown section(s) {sorted(unknown_sections)}" if unknown_sections else ""))
    known = set(C.Config().flat())
    for key, spec in raw["params"].items():
        where = f"--search-space {path}: parameter '{key}'"
        if key not in known:
            raise DeepfakeError(f"{where} is not a config option; known: {', '.join(sorted(known))}")
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise DeepfakeError(f"{where} needs type float, int or categorical")
        extra = set(spec) - DISTRIBUTION_KEYS
        if extra:
            raise DeepfakeError(f"{where} has unknown field(s) {sorted(extra)}; use {sorted(DISTRIBUTION_KEYS)}")
        _check_distribution(where, spec)
        # Every value the space can produce must make a valid config.
        for probe in _probe_values(spec):
            try:
                C.from_dict(C.nest({key: probe}))
            except DeepfakeError as exc:
                raise DeepfakeError(f"{where}: value {probe!r} is impossible ({exc})") from None
    space = SearchSpace(raw["params"], raw.get("sampler") or {"type": "tpe"}, raw.get("pruner") or {"type": "median"})
    # The sampler and pruner are built here, so that a bad argument stops before a study or run exists.
    make_pruner(space.pruner, where=f"--search-space {path}")
    make_sampler(space.sampler, seed=0, where=f"--search-space {path}")
    return space


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_range(value: Any, spec: dict[str, Any]) -> bool:
    """``value`` is one a float or int distribution can draw (within low..high, on the step grid)."""
    if not _is_number(value) or (spec["type"] == "int" and not isinstance(value, int)):
        return False
    if not spec["low"] <= value <= spec["high"]:
        return False
    steps = (value - spec["low"]) / spec["step"] if spec.get("step") else 0
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def _check_distribution(where: str, spec: dict[str, Any]) -> None:
    """Everything Optuna would only reject when a trial suggests the parameter (after a study, a trial
    and its runs exist): one line naming the parameter and the field."""
    kind = spec["type"]
    if kind == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise DeepfakeError(f"{where} needs a non-empty 'choices' list")
        extra = sorted(set(spec) - {"type", "choices"})
        if extra:
            raise DeepfakeError(f"{where} is categorical, so it takes only 'choices' (not {', '.join(extra)})")
        return
    if "choices" in spec:
        raise DeepfakeError(f"{where} is {kind}: 'choices' is for categorical parameters; use low and high")
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    if not _is_number(low) or not _is_number(high):
        raise DeepfakeError(f"{where} needs numeric 'low' and 'high'")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise DeepfakeError(f"{where} is an int parameter, so 'low' and 'high' must be integers (got {low}, {high})")
    if low > high:
        raise DeepfakeError(f"{where} has low {low} > high {high}; swap them")
    if not isinstance(log, bool):
        raise DeepfakeError(f"{where} has log {log!r}; use true or false")
    if log and low <= 0:
        raise DeepfakeError(f"{where} is log-scaled, so low must be > 0 (got {low})")
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise DeepfakeError(f"{where} has step {step!r}; step must be "
                                f"{'an integer' if kind == 'int' else 'a number'} > 0, or left out")
        if log:
            raise DeepfakeError(f"{where} has both 'step' and 'log: true', which Optuna cannot combine; drop one")
    try:  # and whatever else Optuna's own distribution checks
        if kind == "float":
            optuna.distributions.FloatDistribution(low, high, log=log, step=step)
        else:
            optuna.distributions.IntDistribution(low, high, log=log, step=1 if step is None else step)
    except ValueError as exc:
        raise DeepfakeError(f"{where}: {first_line(exc)}") from None


def _probe_values(spec: dict[str, Any]) -> list[Any]:
    if spec["type"] == "categorical":
        return list(spec["choices"])
    return [spec["low"], spec["high"]]


def enqueue_baseline(study: optuna.Study, space: SearchSpace, cfg: C.Config,
                     echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """A new study (no trials yet) starts with the configuration's own values (:meth:`SearchSpace.baseline`):
    the baseline the sampler then has to beat. Returns the enqueued values; None for a study that has trials.
    Two workers starting a new study at once enqueue it once (``skip_if_exists``)."""
    if study.get_trials(deepcopy=False):
        return None
    values = space.baseline(cfg)
    if not values:
        return None
    study.enqueue_trial(values, user_attrs={BASELINE_ATTR: True}, skip_if_exists=True)
    echo(f"New study: the first trial is the configuration's own values, the baseline to beat: {values}")
    return values

