"""Optuna studies over the detector's hyperparameters. The only package that talks to Optuna.

* The search space is one YAML file (shipped: ``search_space``, ``search_space_demo`` in
  ``deepfake/experiments/``): config keys mapped to distributions, plus the sampler and pruner.
* Every trial is one tracked training run (:func:`deepfake.pipeline.run`) nested under the
  study's parent MLflow run; per-epoch validation metrics drive pruning.
* Studies live in an RDB storage (SQLite by default, PostgreSQL for many workers) with
  heartbeats: a trial left RUNNING by a killed worker is failed and retried by the next one.
* ``--n-trials N`` means "until the study holds N finished (complete or pruned) trials", so
  running the same command again resumes, and any number of workers share one budget.

One job per module, each importing only those before it here:

* ``attributes``: the names of what studies and trials keep in the storage;
* ``samplers``: the samplers and pruners a search space names, and the per-trial seeding;
* ``space``: the search space (read and validated from YAML) and the baseline trial;
* ``storage``: the RDB storage riding out database outages, SQLite transactions serialised;
* ``outages``: one-line outage reports and the clean-up after stopped workers;
* ``objective``: :class:`Objective`, one trial as one nested MLflow run;
* ``summary``: the best trial (the Pareto rule for two objectives), logged with Optuna's plots;
* ``study``: :func:`tune`, the study loop of one worker.
"""

from deepfake.tuning.attributes import (
    ALSO_ATTR,
    BASELINE_ATTR,
    FAILURE_ATTR,
    HEAD_ONLY_ATTR,
    PARENT_RUN_ATTR,
    RUN_ATTR,
)
from deepfake.tuning.objective import Objective, PruningCallback, TrialPruned, study_directions
from deepfake.tuning.outages import TrackingUnreachable
from deepfake.tuning.samplers import PRUNERS, SAMPLERS, TrialSeededSampler, make_pruner, make_sampler
from deepfake.tuning.space import SearchSpace, enqueue_baseline, load_search_space
from deepfake.tuning.storage import (
    RetryingStorage,
    RetryStaleTrial,
    StorageUnreachable,
    make_storage,
    serialise_sqlite_transactions,
)
from deepfake.tuning.study import tune
from deepfake.tuning.summary import StudyResult, pareto_choice, summarize

__all__ = [
    "ALSO_ATTR", "BASELINE_ATTR", "FAILURE_ATTR", "HEAD_ONLY_ATTR", "PARENT_RUN_ATTR", "PRUNERS", "RUN_ATTR",
    "SAMPLERS", "Objective", "PruningCallback", "RetryStaleTrial", "RetryingStorage", "SearchSpace",
    "StorageUnreachable", "StudyResult", "TrackingUnreachable", "TrialPruned", "TrialSeededSampler",
    "enqueue_baseline", "load_search_space", "make_pruner", "make_sampler", "make_storage", "pareto_choice",
    "serialise_sqlite_transactions", "study_directions", "summarize", "tune",
]
