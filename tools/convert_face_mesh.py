"""Rebuild ``deepfake/assets/face_landmark.onnx``, the 468-point face mesh, from MediaPipe's wheel.

A developer tool, not part of the package: it needs pip, network access to PyPI, TensorFlow (for the TFLite
reader) and tf2onnx (both in the project's environment). MediaPipe itself is never installed: its wheel is
downloaded (``pip download --no-deps``, a manylinux x86-64 CPython 3.11 wheel, whatever Python runs this) and
only unzipped; ``mediapipe/modules/face_landmark/face_landmark.tflite`` (Apache-2.0) is converted to ONNX with
tf2onnx, then made deterministic and batchable:

* the batch dimension becomes dynamic (``batch``; the two Reshapes at the end take -1), so
  :func:`deepfake.face_mesh.landmarks_batch` runs many images in one call;
* input and outputs get readable names (``image``; ``landmarks``, ``face_flag``), every other tensor and node a
  name by its position (tf2onnx numbers them differently from run to run) and the graph's description no
  temporary path, so a rebuild with the same tf2onnx gives the same bytes.

The ONNX model is checked against the TFLite original on random inputs (batch 1 and 3), and the sha256 of both
files is printed; ``deepfake/assets/NOTICE`` records them. Run from the repository root:

    python tools/convert_face_mesh.py                  # writes deepfake/assets/face_landmark.onnx and NOTICE
    python tools/convert_face_mesh.py --out /tmp/x.onnx --no-notice
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

VERSION = "0.10.21"
MEMBER = "mediapipe/modules/face_landmark/face_landmark.tflite"
REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "deepfake" / "assets"
OPSET = 13
NAMES = {"input_1": "image", "conv2d_21": "landmarks", "conv2d_31": "face_flag"}  # tf2onnx's names -> ours


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(version: str, folder: Path) -> Path:
    """MediaPipe's wheel (not installed, only downloaded)."""
    subprocess.run([sys.executable, "-m", "pip", "download", f"mediapipe=={version}", "--no-deps",
                    "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                    "-d", str(folder)], check=True)
    (wheel,) = folder.glob(f"mediapipe-{version}-*.whl")
    return wheel


def extract(wheel: Path, folder: Path) -> tuple[Path, Path]:
    """``face_landmark.tflite`` and MediaPipe's LICENSE from the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        license_name = next(n for n in zf.namelist() if n.endswith(".dist-info/LICENSE"))
        tflite, license_file = folder / "face_landmark.tflite", folder / "LICENSE"
        tflite.write_bytes(zf.read(MEMBER))
        license_file.write_bytes(zf.read(license_name))
    return tflite, license_file


def canonical(raw: Path, out: Path, version: str) -> None:
    """tf2onnx's model with a dynamic batch, readable input/output names and positional internal names."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(raw))
    graph = model.graph
    reshape_shapes = {node.input[1] for node in graph.node if node.op_type == "Reshape"}
    for init in graph.initializer:
        if init.name in reshape_shapes:
            shape = numpy_helper.to_array(init).copy()
            shape[0] = -1
            init.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), init.name))
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    names: dict[str, str] = dict(NAMES)

    def rename(name: str) -> str:
        if name:
            names.setdefault(name, f"t{len(names) - len(NAMES)}")
            return names[name]
        return name

    for value in [*graph.input, *graph.output]:
        value.name = rename(value.name)
    for k, node in enumerate(graph.node):
        node.name = f"n{k}_{node.op_type}"
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    for init in graph.initializer:
        init.name = rename(init.name)
    del graph.value_info[:]
    graph.doc_string = f"converted from {MEMBER} of mediapipe=={version}"  # tf2onnx names its temporary path
    initializers = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())


def compare(tflite: Path, converted: Path) -> float:
    """Largest absolute difference of the two models' outputs on random inputs in [0, 1]."""
    import onnxruntime as ort
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    outputs = sorted(interpreter.get_output_details(), key=lambda d: int(np.prod(d["shape"])), reverse=True)
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, (3, 192, 192, 3)).astype(np.float32)
    got = session.run(["landmarks", "face_flag"], {"image": x})
    worst = 0.0
    for i in range(len(x)):
        interpreter.set_tensor(inp["index"], x[i:i + 1])
        interpreter.invoke()
        for ours, theirs in zip(got, outputs, strict=True):
            ref = interpreter.get_tensor(theirs["index"]).reshape(-1)
            worst = max(worst, float(np.abs(ours[i].reshape(-1) - ref).max()))
    return worst


def notice(version: str, tflite_sha: str, onnx_sha: str, license_text: str) -> str:
    return f"""face_landmark.onnx: MediaPipe's 468-point face mesh (face landmark) model, converted to ONNX.

Origin: mediapipe/modules/face_landmark/face_landmark.tflite in the PyPI wheel mediapipe=={version}
(mediapipe-{version}-cp311-cp311-manylinux_2_28_x86_64.whl), https://github.com/google-ai-edge/mediapipe,
Copyright The MediaPipe Authors, licensed under the Apache License, Version 2.0 (the text follows below).

Changes: converted from TFLite to ONNX (opset {OPSET}) with tf2onnx by tools/convert_face_mesh.py, which also
made the batch dimension dynamic and renamed the input (image), the outputs (landmarks, face_flag) and the
internal tensors and nodes. The weights and the computation are unchanged (the outputs match the TFLite model's
to about 1e-4 pixels).

sha256 of the original face_landmark.tflite: {tflite_sha}
sha256 of the converted face_landmark.onnx:  {onnx_sha}

--------------------------------------------------------------------------------------------------------------

{license_text}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=VERSION, help="mediapipe release whose wheel holds the model")
    parser.add_argument("--out", type=Path, default=ASSETS / "face_landmark.onnx")
    parser.add_argument("--no-notice", action="store_true", help="do not write NOTICE next to --out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tflite, license_file = extract(download(args.version, work), work)
        raw = work / "raw.onnx"
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite), "--output", str(raw),
                        "--opset", str(OPSET)], check=True)
        canonical(raw, work / "face_landmark.onnx", args.version)
        worst = compare(tflite, work / "face_landmark.onnx")
        if worst > 1e-2:
            sys.exit(f"the converted model differs from the TFLite one by up to {worst:.3g}; not written")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "face_landmark.onnx", args.out)
        tflite_sha, onnx_sha = sha256(tflite), sha256(args.out)
        if not args.no_notice:
            (args.out.parent / "NOTICE").write_text(notice(args.version, tflite_sha, onnx_sha,
                                                           license_file.read_text()))
    print(f"largest difference from the TFLite model: {worst:.3g}")
    print(f"face_landmark.tflite sha256 {tflite_sha}")
    print(f"{args.out.name} sha256 {onnx_sha}  ({args.out})")


if __name__ == "__main__":
    main()
