"""Exported detectors run without Keras: ONNX Runtime and OpenVINO, each with the slice of the Keras API
(``predict(images, batch_size)`` -> ``(N, 1)`` sigmoid outputs) that :class:`deepfake.inference.Predictor` uses.

Which runtime and precision a folder needs is written by :mod:`deepfake.export` into its
``model.meta.json`` (``format``, ``precision``); :func:`load_exported` reads a folder accordingly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deepfake.errors import DeepfakeError, first_line

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"  # with its weights in model.bin beside it
OPENVINO_WEIGHTS = "model.bin"
EXPORTED_FILES = (ONNX_FILE, OPENVINO_FILE, OPENVINO_WEIGHTS)


# What scores the pictures of a model `deepfake serve` serves (deepfake.server.openvino_scorer).
SERVE_RUNTIMES = ("auto", "keras", "openvino", "openvino-bf16")


class OnnxModel:
    """An ONNX Runtime session (CPU)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors (Fail, InvalidProtobuf...) are bare Exceptions
            raise DeepfakeError(f"{path}: not a loadable ONNX model ({first_line(exc, 150)})") from None
        (image_input,) = self.session.get_inputs()  # a detector has one input: the images
        self.input_name = image_input.name

    def predict(self, images: np.ndarray, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        x = np.asarray(images, dtype="float32")
        outs = [self.session.run(None, {self.input_name: x[i : i + batch_size]})[0]
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, 1), dtype="float32")


def cpu_supports(precision: str) -> bool:
    """This CPU runs OpenVINO at ``precision`` natively (``bf16``: AVX512_BF16 or AMX; ``f32`` always)."""
    import openvino as ov

    if precision == "f32":
        return True
    return precision.upper() in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoModel:
    """An OpenVINO model compiled for the CPU.

    ``precision`` is OpenVINO's inference precision hint: ``f32``, or ``bf16`` on CPUs with AVX512_BF16
    or AMX (elsewhere it falls back to ``f32`` with a warning). An INT8 model (quantised at export) runs
    its quantised layers in int8 whatever the hint. One stream using every core: best for one request at a
    time, from one image to a batch.
    """

    def __init__(self, path: str | Path, precision: str = "f32", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise DeepfakeError(f"{path}: an OpenVINO model needs the openvino package: pip install openvino") from None

        if not cpu_supports(precision):
            log.warning("this CPU has no native %s; the OpenVINO model runs in f32 instead", precision)
            precision = "f32"
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises bare RuntimeErrors/Exceptions for bad files
            raise DeepfakeError(f"{path}: not a loadable OpenVINO model ({first_line(exc, 150)})") from None
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def predict(self, images: np.ndarray, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        x = np.asarray(images, dtype="float32")
        outs = [np.array(self.request.infer({0: x[i : i + batch_size]})[0], copy=True)
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, 1), dtype="float32")


def load_exported(folder: Path, precision: str = "f32") -> OnnxModel | OpenVinoModel | None:
    """The exported model in ``folder`` (OpenVINO before ONNX), or None when it holds neither."""
    if (folder / OPENVINO_FILE).is_file():
        return OpenVinoModel(folder / OPENVINO_FILE, precision)
    if (folder / ONNX_FILE).is_file():
        return OnnxModel(folder / ONNX_FILE)
    return None
