# `make demo` and `make test` each install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# The suite runs on TEST_WORKERS pytest-xdist workers, each test file on one worker so that its module fixtures are
# built once; TEST_WORKERS=0 runs it in this process (for pdb, or one file). Three on two cores: a sixth of the
# suite's time is spent waiting (subprocesses starting, heartbeats, servers), which a third worker fills
# (measured: 10 min 40 s with two, 9 min 41 s with three).
TEST_WORKERS ?= 3
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
FLOOR_VENV ?= .venv-floor
OPTUNA_STORAGE ?= sqlite:///optuna.db
DASHBOARD_PORT ?= 8080
# TensorFlow for the CPU; on Linux with an NVIDIA GPU: `make install EXTRAS=gpu,dev` into a new .venv (the two
# TensorFlow builds overwrite each other, so switching means `rm -rf .venv` first).
EXTRAS ?= cpu,dev

.PHONY: install demo test test-fast test-floor lint ui dashboard clean

$(BIN)/deepfake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

install: $(BIN)/deepfake  ## create .venv and install deepfake with its dependencies

demo: install  ## the whole experiment suite on synthetic demo data (mlflow run .)
	PATH="$(abspath $(BIN)):$$PATH" mlflow run . --env-manager local --experiment-name deepfake-demo

test: install  ## every test, the slow end-to-end ones included
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install  ## skip the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

test-floor:  ## the fast tests on the oldest versions pyproject.toml allows, in a fresh $(FLOOR_VENV)
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet -c .ci/floor-constraints.txt -e ".[cpu,dev]"
	$(FLOOR_VENV)/bin/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: install  ## ruff (configured in pyproject.toml)
	$(BIN)/ruff check .

ui: install  ## browse runs, trials and registered models
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

dashboard: install  ## browse Optuna studies with optuna-dashboard (OPTUNA_STORAGE=... for another storage)
	$(BIN)/optuna-dashboard $(OPTUNA_STORAGE) --port $(DASHBOARD_PORT)

clean:  ## remove generated runs, caches and demo data (keeps .venv and .venv-floor)
	rm -rf mlruns mlartifacts mlflow.db optuna.db outputs demo_data demo_videos .cache sample_prediction.png
