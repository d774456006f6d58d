"""Inference for users: pyfunc on mixed inputs, predict CLI, explain, sample, unsafe inputs, serving."""

import base64
import io
import json
import os
import shutil
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
from PIL import Image

from deepfake import config as C
from deepfake import pipeline, registry, tracking
from deepfake.cli import main
from tests.helpers import png_bomb

CHAMPION = "models:/deepfake-detector@champion"
PATH_ROOT_ENV = "DEEPFAKE_SERVE_PATH_ROOT"  # documented: the folder a served model may read paths from


@pytest.fixture(scope="module")
def champion(tmp_path_factory, tiny_split_dataset):
    """A tiny trained detector, logged, registered and promoted to @champion in its own store.

    Built on the smallest backbone (EfficientNet-Lite0), so pyfunc, predict, explain and serving are
    checked beyond ResNet50 (which the training and tuning tests use)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    cfg = C.resolve(set_args=[
        f"data.path={tiny_split_dataset}", "data.image_size=32", "data.batch_size=8", "model.weights=none",
        "model.backbone=efficientnet_lite0", "model.head_units=[8]", "train.epochs=1", "train.fine_tune_epochs=1",
        f"train.output_dir={root}/out",
        f"tracking.tracking_uri={uri}", "tracking.experiment=inference",
    ])
    tracking.setup(cfg.tracking)
    result = pipeline.run(cfg, verbose=0, echo=lambda s: None)
    record = registry.register_and_promote(result.model_uri, cfg, result.dataset, out_dir=root / "reg",
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
    model = mlflow.pyfunc.load_model(CHAMPION)  # the user's own process reads paths
    good = images["good"][0]
    raw = good.read_bytes()
    frame = pd.DataFrame({"image": [str(good), raw, base64.b64encode(raw).decode(), str(images["corrupt"]),
                                    base64.b64encode(images["bomb"].read_bytes()).decode(), "neither/path.jpg"]})
    out = model.predict(frame)
    assert list(out.columns) == ["fake_probability", "label", "error", "frames", "frame_probabilities"]
    assert len(out) == 6
    # The same image as a path, as bytes and as base64 gets the same answer.
    assert out.loc[0, "error"] == out.loc[1, "error"] == out.loc[2, "error"] == ""
    assert out.loc[0, "fake_probability"] == pytest.approx(out.loc[1, "fake_probability"]) == \
        pytest.approx(out.loc[2, "fake_probability"])
    assert out.loc[0, "label"] in ("real", "fake")
    assert "truncated" in out.loc[3, "error"] or "decode" in out.loc[3, "error"]
    assert "too large" in out.loc[4, "error"]  # the decompression bomb is refused before decoding
    assert "no such file" in out.loc[5, "error"]
    assert out["fake_probability"].tolist()[3:] == [None, None, None]
    # Signature, input example and requirements are logged with the model.
    info = mlflow.models.get_model_info(CHAMPION)
    assert info.signature.inputs.input_names() == ["image"]
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION))
    assert (local / "requirements.txt").read_text().count("==") >= 3
    assert any(local.glob("input_example*"))


def _base64_png(comment_chars: int) -> tuple[bytes, str]:
    """A small valid PNG (4x4 px, a text comment of ``comment_chars``) whose base64 has no '/' in it."""
    from PIL import PngImagePlugin

    for seed in range(5000):
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8))
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "A" * comment_chars)
        buf = io.BytesIO()
        img.save(buf, format="PNG", pnginfo=info)
        text = base64.b64encode(buf.getvalue()).decode()
        if "/" not in text:
            return buf.getvalue(), text
    raise AssertionError("no such PNG found")


def test_base64_images_are_decoded_without_trying_them_as_paths(champion, tmp_path, monkeypatch):
    from deepfake.inference import Predictor

    predictor = Predictor.from_dir(champion["model_dir"])  # paths allowed: the command line, local use
    monkeypatch.chdir(tmp_path)
    long_raw, long_text = _base64_png(300)
    short_raw, short_text = _base64_png(0)
    assert 255 < len(long_text) < 4096 and len(short_text) <= 255  # too long for a file name; a possible one
    (tmp_path / short_text).write_bytes(b"a file that happens to have the base64 text as its name")
    bad = "Q" * 300 + "!"  # neither base64 nor a possible file name
    rows = predictor.predict_values([long_text, short_text, bad])
    assert rows[0]["error"] is None and rows[1]["error"] is None, rows
    expected = predictor.predict_values([long_raw, short_raw])
    assert [r["fake_probability"] for r in rows[:2]] == pytest.approx([r["fake_probability"] for r in expected])
    assert rows[2]["error"] and "QQQQ" not in rows[2]["error"]  # the input is never echoed back
    assert rows[2]["fake_probability"] is None


def test_served_model_reads_no_file_paths_by_default(champion, images, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    monkeypatch.delenv(PATH_ROOT_ENV, raising=False)
    mlflow.set_tracking_uri(champion["uri"])
    # What MLflow's scoring server sets before loading the model (the slow serving test checks the real server).
    monkeypatch.setenv("__pyfunc_model_path__", "models:/deepfake-detector@champion")
    model = mlflow.pyfunc.load_model(CHAMPION)  # exactly as `mlflow models serve` loads it
    good = str(images["good"][0])
    probes = ["/etc/passwd", "/etc/passwx", good, good[:-5] + "X.jpg", str(tmp_path)]
    out = model.predict(pd.DataFrame({"image": probes}))
    assert out["fake_probability"].tolist() == [None] * 5 and (out["label"] == "").all()
    errors = out["error"].tolist()
    # Nothing tells a client whether a path exists, is a file or is an image.
    assert errors[0] == errors[1] and errors[2] == errors[3] == errors[4]
    assert "not a base64-encoded image" in errors[2]
    assert not any(p in e for p in probes for e in errors)
    # A client cannot switch path reading on: predict-time params are not honoured.
    again = model.predict(pd.DataFrame({"image": [good]}), params={"allow_paths": True})
    assert again.loc[0, "error"] == errors[2]
    # Image bytes and base64 are answered as before.
    raw = images["good"][0].read_bytes()
    ok = model.predict(pd.DataFrame({"image": [raw, base64.b64encode(raw).decode()]}))
    assert (ok["error"] == "").all() and ok["fake_probability"].notna().all()


def test_served_model_reads_paths_only_inside_the_operators_folder(champion, images, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    mlflow.set_tracking_uri(champion["uri"])
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(images["good"][0], allowed / "inside.jpg")
    (allowed / "escape.jpg").symlink_to(images["good"][1])  # a symlink pointing out of the folder
    monkeypatch.setenv(PATH_ROOT_ENV, str(allowed))
    model = mlflow.pyfunc.load_model(CHAMPION)
    refused = [str(images["good"][1]), "/etc/passwd", "../" * 12 + "etc/passwd", "escape.jpg", "missing.jpg",
               str(allowed), "inside.jpg/.."]
    out = model.predict(pd.DataFrame({"image": [str(allowed / "inside.jpg"), "inside.jpg", *refused]}))
    assert (out["error"][:2] == "").all() and out["fake_probability"][:2].notna().all()
    assert out["fake_probability"][2:].isna().all()
    assert out["error"][2:].nunique() == 1 and PATH_ROOT_ENV in out.loc[2, "error"]
    assert not any(p in out.loc[2, "error"] for p in refused)
    # A folder that does not exist is a configuration error at load time, not a silent "no paths".
    monkeypatch.setenv(PATH_ROOT_ENV, str(tmp_path / "nope"))
    with pytest.raises(Exception, match=f"{PATH_ROOT_ENV} / path_root .*nope: no such folder"):
        mlflow.pyfunc.load_model(CHAMPION)


def test_error_rows_serve_as_json_null_not_nan(champion, images, monkeypatch):
    from mlflow.pyfunc.scoring_server import predictions_to_json

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    mlflow.set_tracking_uri(champion["uri"])
    model = mlflow.pyfunc.load_model(CHAMPION)
    good = base64.b64encode(images["good"][0].read_bytes()).decode()
    out = model.predict(pd.DataFrame({"image": [good, "not base64 at all!", ""]}))
    buf = io.StringIO()
    predictions_to_json(out, buf)  # what `mlflow models serve` sends back

    def strict(constant):
        raise AssertionError(f"bare {constant} in the response")

    rows = json.loads(buf.getvalue(), parse_constant=strict)["predictions"]
    assert 0 <= rows[0]["fake_probability"] <= 1 and rows[0]["error"] == ""
    assert rows[1]["fake_probability"] is None and rows[2]["fake_probability"] is None
    assert rows[1]["error"] and rows[2]["error"] == "empty input"


def test_pyfunc_labels_at_the_threshold_stored_with_the_model(champion, tmp_path, monkeypatch):
    """The registered pyfunc carries the threshold training chose on validation (the run's ``threshold``
    metric) and labels at the threshold stored with the model, whatever it is (not at 0.5)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    mlflow.set_tracking_uri(champion["uri"])
    version = mlflow.MlflowClient().get_model_version_by_alias("deepfake-detector", "champion")
    chosen = mlflow.get_run(version.run_id).data.metrics["threshold"]
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(tmp_path / "model")))
    (meta_path,) = local.rglob("model.meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["threshold"] == pytest.approx(chosen)
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode()
                                    for p in sorted(champion["data"].rglob("*.jpg"))]})
    probs = mlflow.pyfunc.load_model(str(local)).predict(frame)["fake_probability"].astype(float)
    # Store other thresholds: just above every probability, then at the lowest one. No fixed threshold
    # could give both answers; the pyfunc labels by the one stored with the model.
    for threshold, label in ((float(np.nextafter(probs.max(), 2.0)), "real"), (float(probs.min()), "fake")):
        meta["threshold"] = threshold
        meta_path.write_text(json.dumps(meta))
        out = mlflow.pyfunc.load_model(str(local)).predict(frame)
        assert out["fake_probability"].astype(float).tolist() == pytest.approx(probs.tolist())
        assert set(out["label"]) == {label}, (threshold, out)


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
    as_json = runner.invoke(main, ["predict", "--model", str(champion["model_dir"]), test_dir,
                                   "--output", str(out_json)])
    assert as_json.exit_code == 0
    assert len(json.loads(out_json.read_text())) == len(images["good"])


def test_predict_cli_default_model_is_the_champion(champion, images):
    result = CliRunner().invoke(main, ["predict", "--tracking-uri", champion["uri"], str(images["good"][0])])
    assert result.exit_code == 0, result.output
    assert str(images["good"][0]) in result.output


def test_predict_cli_reads_every_format_keeps_real_names_and_reports_symlink_loops(champion, images, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    with Image.open(images["good"][0]) as img:
        rgb = img.convert("RGB")
    rgb.save(folder / "a.jpeg")
    rgb.convert("CMYK").save(folder / "b_cmyk.jpg")
    rgb.save(folder / "c.webp")
    rgb.save(folder / "d.tif")
    rgb.convert("L").save(folder / "e.tiff")
    shutil.copy(images["good"][0], folder / "z_real.jpg")
    (folder / "a_alias.jpg").symlink_to("z_real.jpg")  # sorts before its target
    (folder / "loop1.png").symlink_to("loop2.png")
    (folder / "loop2.png").symlink_to("loop1.png")
    out_csv = tmp_path / "p.csv"
    result = CliRunner().invoke(main, ["predict", "--model", str(champion["model_dir"]), str(folder),
                                       "--output", str(out_csv)])
    assert result.exit_code == 1, result.output  # the loops could not be read
    frame = pd.read_csv(out_csv).set_index(pd.read_csv(out_csv)["path"].map(lambda p: Path(p).name))
    assert set(frame.index) == {"a.jpeg", "b_cmyk.jpg", "c.webp", "d.tif", "e.tiff", "z_real.jpg",
                                "loop1.png", "loop2.png"}  # the real file's name, once; the loops listed
    answered = frame.drop(index=["loop1.png", "loop2.png"])
    assert answered["error"].isna().all(), answered["error"].dropna().to_dict()
    assert answered["fake_probability"].between(0, 1).all()
    assert (frame.loc[["loop1.png", "loop2.png"], "error"] == "cannot read file: symlink loop").all()
    assert "6 answered" in result.output and "2 unreadable" in result.output


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
    # The scoring server's own 60 s request timeout would make the few-MB request below a timing test on a
    # loaded machine; what is tested is that such a request is answered.
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion["uri"], "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "600",
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
        # A few MB in one request is answered: a few large photos (each decoded and resized like any image;
        # many small rows would make it a test of the per-row decoding speed, ~30 ms a row on these cores).
        buf = io.BytesIO()
        noise = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buf, format="JPEG", quality=95)
        photo = base64.b64encode(buf.getvalue()).decode()
        big = {"dataframe_records": [{"image": photo}] * 4}
        assert len(json.dumps(big)) > 2_000_000
        answer = requests.post(f"{url}/invocations", json=big, timeout=300)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 4
        assert all(r["error"] == "" and 0 <= r["fake_probability"] <= 1 for r in answer.json()["predictions"])
        # A base64 image too long for a file name, without '/': answered (not "File name too long").
        # The server's own files are not read, and existing and missing ones get the same answer.
        # Error rows are strict JSON: null, never a bare NaN.
        _, long_text = _base64_png(300)
        probes = [long_text, str(images["good"][0]), str(images["good"][0]) + ".missing", "/etc/passwd", "/etc/passwx"]

        def strict(constant):
            raise AssertionError(f"bare {constant} in the response")

        for extra in ({}, {"params": {"allow_paths": True}}):  # clients cannot switch path reading on
            answer = requests.post(f"{url}/invocations", timeout=60,
                                   json={"dataframe_split": {"columns": ["image"], "data": [[p] for p in probes]},
                                         **extra})
            assert answer.status_code == 200, answer.text
            rows = json.loads(answer.text, parse_constant=strict)["predictions"]
            assert rows[0]["error"] == "" and 0 <= rows[0]["fake_probability"] <= 1
            assert all(r["fake_probability"] is None and r["error"] for r in rows[1:])
            assert rows[1]["error"] == rows[2]["error"] and rows[3]["error"] == rows[4]["error"]
            assert not any(p in r["error"] for p in probes for r in rows)
        assert requests.get(f"{url}/ping", timeout=5).status_code == 200  # still answering
    finally:
        server.terminate()
        server.wait(timeout=30)
