"""The registered detector as an MLflow pyfunc, logged as models-from-code.

:func:`deepfake.tracking.log_model` logs this file by its path (never importing it); MLflow copies it
into the model and runs it to get the model, and :func:`mlflow.models.set_model` at the bottom hands
MLflow the :class:`DeepfakePyfunc`. Nothing is pickled. It is the one module besides
:mod:`deepfake.tracking` that imports MLflow, because models-from-code needs it to; nothing in the
package imports it.

Input: a DataFrame with an ``image`` column of raw encoded bytes or base64 strings (any mix).
Output: ``fake_probability`` (``None`` when the row could not be answered), ``label`` (at the
threshold stored with the model) and ``error`` (empty when the row was answered). Decoding and
resizing give the training pipeline's pixels (:func:`deepfake.pixels.decode`, the twin of
:func:`deepfake.images.decode_image`).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel, PythonModelContext

from deepfake.inference import PATH_ROOT_ENV, Predictor, path_access

# Set by MLflow's scoring server (`mlflow models serve`, and the images `mlflow models build-docker` makes).
SCORING_SERVER_ENV = "__pyfunc_model_path__"
SERVING_FLAG_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


class DeepfakePyfunc(PythonModel):
    """A :class:`~deepfake.inference.Predictor` loaded from the model's artifacts (``keras_model`` and ``meta``, or
    an exported model's files beside its ``meta``: :func:`deepfake.inference.pyfunc_artifacts`).

    File paths are read in one's own process (``mlflow.pyfunc.load_model``), never for a client of
    a served model: in a process started by ``mlflow models serve`` (MLflow's scoring server, which
    sets ``__pyfunc_model_path__`` before it loads the model) paths are refused unless the operator
    names a folder (``path_root`` in the model config or the ``DEEPFAKE_SERVE_PATH_ROOT`` environment
    variable; only files inside it). ``model_config={"allow_paths": False}`` refuses them locally too.
    Predict-time ``params`` cannot enable it.
    """

    def load_context(self, context: PythonModelContext) -> None:
        config = getattr(context, "model_config", None) or {}
        served = bool(os.environ.get(SCORING_SERVER_ENV) or os.environ.get(SERVING_FLAG_ENV))
        allow = config.get("allow_paths")  # None, as logged: paths in one's own process, none when served
        artifacts = context.artifacts
        if "keras_model" in artifacts:
            self.predictor = Predictor.from_files(artifacts["keras_model"], artifacts["meta"])
        else:  # an exported model (deepfake export --register): its files lie beside its metadata
            self.predictor = Predictor.from_dir(Path(artifacts["meta"]).parent)
        self.predictor.paths = path_access(allow_paths=(not served) if allow is None else allow is True,
                                           root=config.get("path_root") or os.environ.get(PATH_ROOT_ENV))

    def predict(self, context, model_input, params=None):
        return self.predictor.predict_frame(model_input)


mlflow.models.set_model(DeepfakePyfunc())
