"""Inference for users: pyfunc on mixed inputs, predict CLI, explain, sample, unsafe inputs, serving."""

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from deepfake import config as C
from deepfake import pipeline, tracking
from deepfake.cli import main
from tests.test_data import png_bomb

CHAMPION = "models:/deepfake-detector@champion"


@pytest.fixture(scope="module")
def champion(tmp_path_factory, tiny_split_dataset):
    """A tiny trained detector, logged, registered and promoted to @champion in its own store."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    cfg = C.resolve(set_args=[
        f"data.path={tiny_split_dataset}", "data.image_size=32", "data.batch_size=8", "model.weights=none",
        "model.head_units=[8]", "train.epochs=1", "train.fine_tune_epochs=1", f"train.output_dir={root}/out",
        f"tracking.tracking_uri={uri}", "tracking.experiment=inference",
    ])
    tracking.setup(cfg.tracking)
    result = pipeline.run(cfg, verbose=0, echo=lambda s: None)
    record = pipeline.register_and_promote(result.model_uri, cfg, result.dataset, out_dir=root / "reg",
                                           echo=lambda s: None)
    assert record["promoted"]
    return {"uri": uri, "model_dir": result.model_dir, "data": Path(tiny_split_dataset), "root": root}


@pytest.fixture()
def images(champion, tmp_path):
    good = sorted((champion["data"] / "test").rglob("*.jpg"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good[0].read_bytes()[:100])
    return {"good": good, "corrupt": corrupt, "bomb": png_bomb(tmp_path / "bomb.png")}


def test_pyfunc_answers_paths_bytes_and_base64_with_per_row_errors(champion, images, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    mlflow.set_tracking_uri(champion["uri"])
    model = mlflow.pyfunc.load_model(CHAMPION)
    good = images["good"][0]
    raw = good.read_bytes()
    frame = pd.DataFrame({"image": [str(good), raw, base64.b64encode(raw).decode(), str(images["corrupt"]),
                                    base64.b64encode(images["bomb"].read_bytes()).decode(), "neither/path.jpg"]})
    out = model.predict(frame)
    assert list(out.columns) == ["fake_probability", "label", "error"] and len(out) == 6
    # The same image as a path, as bytes and as base64 gets the same answer.
    assert out.loc[0, "error"] == out.loc[1, "error"] == out.loc[2, "error"] == ""
    assert out.loc[0, "fake_probability"] == pytest.approx(out.loc[1, "fake_probability"]) == \
        pytest.approx(out.loc[2, "fake_probability"])
    assert out.loc[0, "label"] in ("real", "fake")
    assert "truncated" in out.loc[3, "error"] or "decode" in out.loc[3, "error"]
    assert "too large" in out.loc[4, "error"]  # the decompression bomb is refused before decoding
    assert "no such file" in out.loc[5, "error"]
    # Signature, input example and requirements are logged with the model.
    info = mlflow.models.get_model_info(CHAMPION)
    assert info.signature.inputs.input_names() == ["image"]
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION))
    assert (local / "requirements.txt").read_text().count("==") >= 3
    assert any(local.glob("input_example*"))


def test_pyfunc_threshold_is_the_one_stored_with_the_model(champion):
    from deepfake.inference import Predictor

    predictor = Predictor.from_dir(champion["model_dir"])
    meta = json.loads((Path(champion["model_dir"]) / "model.meta.json").read_text())
    assert predictor.meta.threshold == meta["threshold"]
    assert predictor.label_of(meta["threshold"]) == "fake"
    assert predictor.label_of(max(meta["threshold"] - 1e-6, 0)) == ("real" if meta["threshold"] > 0 else "fake")


def test_predict_cli_folders_globs_outputs_and_exit_codes(champion, images, tmp_path):
    test_dir = str(champion["data"] / "test")
    runner = CliRunner()
    ok = runner.invoke(main, ["predict", "--model", str(champion["model_dir"]), test_dir])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("\t") >= 2 * len(images["good"])
    out_csv = tmp_path / "p.csv"
    mixed = runner.invoke(main, ["predict", "--model", str(champion["model_dir"]), f"{test_dir}/*/*.jpg",
                                 str(images["corrupt"]), str(images["bomb"]), "--output", str(out_csv)])
    assert mixed.exit_code == 1, mixed.output  # some rows failed
    frame = pd.read_csv(out_csv)
    assert len(frame) == len(images["good"]) + 2
    assert frame["error"].notna().sum() == 2
    assert frame.loc[frame["path"].str.endswith("bomb.png"), "error"].str.contains("too large").all()
    out_json = tmp_path / "p.json"
    as_json = runner.invoke(main, ["predict", "--model", str(champion["model_dir"]), test_dir, "--output", str(out_json)])
    assert as_json.exit_code == 0
    assert len(json.loads(out_json.read_text())) == len(images["good"])


def test_predict_cli_default_model_is_the_champion(champion, images):
    result = CliRunner().invoke(main, ["predict", "--tracking-uri", champion["uri"], str(images["good"][0])])
    assert result.exit_code == 0, result.output
    assert str(images["good"][0]) in result.output


@pytest.mark.parametrize("args, fragment", [
    (["/no/such/dir"], "no such file"),
    (["--output", "x.txt", "."], ".csv or .json"),
    (["--model", "/no/model", "."], "no such file or folder"),
])
def test_predict_cli_usage_errors_exit_2(champion, args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(champion["data"])
    result = CliRunner().invoke(main, ["predict", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_explain_saves_a_grad_cam(champion, images, tmp_path):
    from deepfake.explain import grad_cam
    from deepfake.inference import Predictor

    predictor = Predictor.from_dir(champion["model_dir"])
    pixels = predictor.decode(str(images["good"][0]))
    predictor.meta.temperature = 1.7  # as if calibrated: explain must report what inference reports
    heat, prob = grad_cam(predictor, pixels)
    assert heat.shape == pixels.shape[:2]
    assert heat.min() >= 0 and heat.max() <= 1
    assert prob == pytest.approx(float(predictor.predict_arrays(pixels[None])[0]), abs=1e-4)
    out = tmp_path / "cam.png"
    result = CliRunner().invoke(main, ["explain", "--model", str(champion["model_dir"]), str(images["good"][0]),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(main, ["explain", "--model", str(champion["model_dir"]), str(images["bomb"])])
    assert bad.exit_code == 2 and "too large" in bad.output


def test_sample_with_local_model_and_registered_champion(champion, tmp_path):
    single = tmp_path / "one.png"
    r1 = CliRunner().invoke(main, ["sample", "--model", str(champion["model_dir"]), "--data", str(champion["data"]),
                                   "--seed", "3", "--out", str(single)])
    assert r1.exit_code == 0, r1.output
    assert "true:" in r1.output and "fake probability:" in r1.output and single.is_file()
    r2 = CliRunner().invoke(main, ["sample", "--model", str(champion["model_dir"]), "--data", str(champion["data"]),
                                   "--seed", "3", "--out", str(single)])
    assert r1.output.splitlines()[0] == r2.output.splitlines()[0]  # same seed, same image
    grid = tmp_path / "grid.png"
    r3 = CliRunner().invoke(main, ["sample", "--tracking-uri", champion["uri"], "--data", str(champion["data"]),
                                   "-n", "4", "--seed", "1", "--out", str(grid)])
    assert r3.exit_code == 0, r3.output
    assert r3.output.count("true:") == 4 and grid.is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_base64_requests(champion, images):
    import requests

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion["uri"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail("server did not start")
        good = [base64.b64encode(p.read_bytes()).decode() for p in images["good"][:3]]
        corrupt = base64.b64encode(images["corrupt"].read_bytes()).decode()
        body = {"dataframe_split": {"columns": ["image"], "data": [[g] for g in good] + [[corrupt]]}}
        answer = requests.post(f"{url}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["predictions"]
        assert len(rows) == 4
        assert all(r["error"] == "" and 0 <= r["fake_probability"] <= 1 for r in rows[:3])
        assert rows[3]["error"]
        empty = requests.post(f"{url}/invocations", data=b"", headers={"Content-Type": "application/json"}, timeout=30)
        assert empty.status_code == 400
        # A few MB in one request (the same image many times) is answered.
        big = {"dataframe_records": [{"image": good[0]}] * 3000}
        assert len(json.dumps(big)) > 2_000_000
        answer = requests.post(f"{url}/invocations", json=big, timeout=300)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3000
        assert requests.get(f"{url}/ping", timeout=5).status_code == 200  # still answering
    finally:
        server.terminate()
        server.wait(timeout=30)
