# `make demo` and `make test` each install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test test-fast ui clean

$(BIN)/deepfake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(BIN)/deepfake  ## create .venv and install deepfake with its dependencies

demo: install  ## the whole experiment suite on synthetic demo data (mlflow run .)
	PATH="$(abspath $(BIN)):$$PATH" mlflow run . --env-manager local --experiment-name deepfake-demo

test: install  ## every test, the slow end-to-end ones included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install  ## skip the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

ui: install  ## browse runs, trials and registered models
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean:  ## remove generated runs, caches and demo data (keeps .venv)
	rm -rf mlruns mlartifacts mlflow.db optuna.db outputs demo_data .cache sample_prediction.png
