"""`deepfake serve`: the JSON API over real HTTP (uvicorn in a thread), its batching, limits, queue and token."""

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from deepfake.batching import Admission, Busy, MicroBatcher
from deepfake.errors import DeepfakeError
from deepfake.inference import Predictor
from deepfake.server import SECURITY_HEADERS, ServeConfig, create_app
from tests.helpers import RunningServer, png_bomb


def jpeg(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(untrained_detector):
    return Predictor.from_dir(untrained_detector)


@pytest.fixture(scope="module")
def server(predictor):
    """The tiny detector served with its defaults (batches wait 20 ms, so that concurrent requests share them)."""
    with RunningServer(create_app(predictor, ServeConfig(max_wait_ms=20, max_image_bytes=200_000))) as running:
        yield running


def post(server, *files: bytes, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/api/predict", files=[("file", (f"f{i}", f)) for i, f in enumerate(files)],
                         timeout=60, **kwargs)


# --------------------------------------------------------------------------- answers


def test_an_image_is_answered_as_deepfake_predict_answers_it(server, predictor):
    image = jpeg(1)
    response = post(server, image)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    (expected,) = predictor.predict_values([image])
    assert result["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-6)
    assert result["label"] == expected["label"] and result["threshold"] == 0.5
    assert result["kind"] == "image" and result["frames"] == 1 and result["error"] is None
    assert "gradcam" not in result  # only on request


def test_several_files_get_one_result_each_in_order_and_a_bad_one_its_own_error(server, predictor):
    good = [jpeg(2), jpeg(3)]
    response = post(server, good[0], b"hello, not a picture", good[1])
    assert response.status_code == 200  # at least one answered
    results = response.json()["results"]
    expected = predictor.predict_values(good)
    assert [results[0]["fake_probability"], results[2]["fake_probability"]] == pytest.approx(
        [e["fake_probability"] for e in expected], abs=1e-6)
    assert results[1]["fake_probability"] is None
    assert results[1]["error"]["status"] == 415 and "not an image or video" in results[1]["error"]["message"]


def test_a_raw_body_is_one_file(server):
    response = requests.post(f"{server.url}/api/predict", data=jpeg(4), timeout=60,
                             headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200 and response.json()["results"][0]["kind"] == "image"


def test_explain_adds_the_heat_map_as_a_png_of_the_scored_picture(server):
    response = post(server, jpeg(5), params={"explain": "true"})
    url = response.json()["results"][0]["gradcam"]
    assert url.startswith("data:image/png;base64,")
    heat = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert heat.format == "PNG" and heat.size == (32, 32)  # the model's input size


def test_a_video_is_answered_with_its_frames(server, tmp_path, predictor):
    from deepfake.video import write_video

    frames = [np.full((64, 64, 3), 20 * i, np.uint8) for i in range(12)]
    write_video(tmp_path / "clip.mp4", frames, fps=10)
    raw = (tmp_path / "clip.mp4").read_bytes()
    result = post(server, raw).json()["results"][0]
    (expected,) = predictor.predict_values([raw])
    assert result["kind"] == "video" and result["frames"] == 8 == len(result["frame_probabilities"])
    assert result["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("body, status, words", [
    (b"just some text", 415, "not an image or video"),
    (jpeg(6)[:300], 422, "truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, ""),
])
def test_bad_files_get_their_status_and_a_one_line_json_error(server, body, status, words):
    response = post(server, body)
    assert response.status_code == status, response.text
    error = response.json()["results"][0]["error"]
    assert error["status"] == status and words in error["message"] and "\n" not in error["message"]
    assert "Traceback" not in response.text


def test_no_file_is_422_and_an_unknown_route_is_a_json_404(server):
    response = requests.post(f"{server.url}/api/predict", files={"other": ("x", b"1")}, timeout=30)
    assert response.status_code == 422 and "field 'file'" in response.json()["error"]["message"]
    assert requests.post(f"{server.url}/api/predict", timeout=30).status_code == 422  # empty body
    missing = requests.get(f"{server.url}/nothing", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == 404


def test_oversized_uploads_are_413(server, tmp_path):
    big = jpeg(7, size=900)  # over this server's 200 kB image limit
    assert len(big) > 200_000
    response = post(server, big)
    assert response.status_code == 413 and "image too large" in response.json()["results"][0]["error"]["message"]
    bomb = post(server, png_bomb(tmp_path / "bomb.png").read_bytes())  # tiny file, 2.5 billion pixels
    assert bomb.status_code == 413 and "pixels" in bomb.json()["results"][0]["error"]["message"]


def test_a_request_over_the_body_limit_is_refused_before_it_is_read(predictor):
    cfg = ServeConfig(max_image_bytes=50_000, max_video_bytes=100_000, max_files=2)
    with RunningServer(create_app(predictor, cfg)) as running:
        declared = requests.post(f"{running.url}/api/predict", data=b"x" * 2_000_000, timeout=30)
        assert declared.status_code == 413 and "request too large" in declared.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit is counted as the body streams in
            for _ in range(40):
                yield b"y" * 100_000

        streamed = requests.post(f"{running.url}/api/predict", data=chunks(), timeout=30)
        assert streamed.status_code == 413
        assert requests.get(f"{running.url}/healthz", timeout=30).json()["status"] == "ok"


# --------------------------------------------------------------------------- batching and the queue


def test_concurrent_uploads_are_scored_together_and_each_gets_its_own_answer(server, predictor):
    images = [jpeg(10 + i) for i in range(12)]
    before = requests.get(f"{server.url}/healthz", timeout=30).json()
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda raw: post(server, raw), images))
    after = requests.get(f"{server.url}/healthz", timeout=30).json()
    got = [r.json()["results"][0]["fake_probability"] for r in responses]
    expected = [r["fake_probability"] for r in predictor.predict_values(images)]
    assert got == pytest.approx(expected, abs=1e-6)
    assert after["pictures_scored"] - before["pictures_scored"] == 12
    assert after["batches"] - before["batches"] < 12  # some shared a model call
    assert after["held"] == 0


def test_a_full_queue_answers_503_with_retry_after_and_recovers(predictor):
    release = threading.Event()
    app = create_app(predictor, ServeConfig(queue=1))
    batcher = app.state.service.batcher
    score = batcher.score
    batcher.score = lambda units: release.wait(30) and score(units)  # the model is busy until released
    with RunningServer(app) as running, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, running, jpeg(30))
        for _ in range(100):  # until the first request holds the only place
            if requests.get(f"{running.url}/healthz", timeout=30).json()["held"] == 1:
                break
            threading.Event().wait(0.05)
        busy = post(running, jpeg(31))
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert "busy" in busy.json()["error"]["message"]
        release.set()
        assert first.result().status_code == 200
        assert post(running, jpeg(32)).status_code == 200


# --------------------------------------------------------------------------- safety


def test_a_token_guards_the_api_but_not_the_page(predictor):
    with RunningServer(create_app(predictor, ServeConfig(token="s3cret"))) as running:
        assert post(running, jpeg(40)).status_code == 401
        wrong = post(running, jpeg(40), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert requests.get(f"{running.url}/api/model", timeout=30).status_code == 401
        good = post(running, jpeg(40), headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["results"][0]["label"] in ("real", "fake")
        assert requests.get(f"{running.url}/", timeout=30).status_code == 200
        assert requests.get(f"{running.url}/healthz", timeout=30).status_code == 200


def test_every_answer_carries_the_security_headers(server):
    for response in (requests.get(f"{server.url}/", timeout=30), post(server, jpeg(41)), post(server, b"bad"),
                     requests.get(f"{server.url}/static/app.js", timeout=30)):
        for key, value in SECURITY_HEADERS.items():
            assert response.headers[key] == value, (response.url, key)
    assert post(server, jpeg(41)).headers["Cache-Control"] == "no-store"


def test_the_page_and_its_assets_are_served_from_the_package(server):
    page = requests.get(f"{server.url}/", timeout=30)
    assert page.headers["Content-Type"].startswith("text/html") and "/static/app.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # works offline
    assert requests.get(f"{server.url}/static/app.css", timeout=30).headers["Content-Type"].startswith("text/css")
    assert requests.get(f"{server.url}/static/..%2Fserver.py", timeout=30).status_code == 404


def test_the_model_description_says_what_is_served(server):
    info = requests.get(f"{server.url}/api/model", timeout=30).json()
    assert info["threshold"] == 0.5 and info["class_names"] == ["real", "fake"] and info["image_size"] == 32
    assert info["explains"] is True and info["limits"]["max_image_bytes"] == 200_000


@pytest.mark.parametrize("host, token, no_auth, ok", [
    ("127.0.0.1", None, False, True), ("::1", None, False, True), ("localhost", None, False, True),
    ("0.0.0.0", None, False, False), ("0.0.0.0", "t", False, True), ("192.168.1.5", None, True, True),
])
def test_a_non_loopback_address_needs_a_token_or_no_auth(host, token, no_auth, ok):
    cfg = ServeConfig(host=host, token=token, no_auth=no_auth)
    if ok:
        cfg.check()
    else:
        with pytest.raises(DeepfakeError, match="--token"):
            cfg.check()


def test_the_command_refuses_an_open_address_in_one_line_before_loading_a_model(monkeypatch):
    from deepfake.cli import main

    monkeypatch.delenv("DEEPFAKE_SERVE_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--model", "/nonexistent"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: --host 0.0.0.0") and "Traceback" not in result.output


# --------------------------------------------------------------------------- the batcher


def test_the_batcher_groups_jobs_up_to_max_rows_and_splits_the_answers():
    calls = []

    def score(units):
        calls.append([len(u) for u in units])
        return np.array([float(u[0, 0, 0, 0]) for u in units])

    gate = threading.Event()
    batcher = MicroBatcher(lambda units: gate.wait(10) and score(units), max_rows=4, max_wait=0.5)
    units = [np.full((1, 2, 2, 3), i, np.float32) for i in range(6)]
    futures = [batcher.submit([u]) for u in units[:5]] + [batcher.submit([units[5], units[5], units[5]])]
    gate.set()
    results = [f.result(10) for f in futures]
    batcher.close()
    assert [list(r) for r in results] == [[0.0], [1.0], [2.0], [3.0], [4.0], [5.0, 5.0, 5.0]]
    assert all(sum(c) <= 4 for c in calls[1:]) and sum(map(sum, calls)) == 8
    assert batcher.batches == len(calls) < 6


def test_a_failing_model_call_fails_its_jobs_and_the_batcher_goes_on():
    state = {"fail": True}

    def score(units):
        if state.pop("fail", False):
            raise RuntimeError("out of memory")
        return np.zeros(len(units))

    batcher = MicroBatcher(score, max_rows=8, max_wait=0.0)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.submit([np.zeros((1, 2, 2, 3))]).result(10)
    assert list(batcher.submit([np.zeros((1, 2, 2, 3))]).result(10)) == [0.0]
    batcher.close()


def test_admission_holds_at_most_its_capacity():
    admission = Admission(3)
    admission.acquire(2)
    with pytest.raises(Busy):
        admission.acquire(2)
    admission.acquire(1)
    assert admission.full()
    admission.release(3)
    assert admission.held == 0 and not admission.full()


# --------------------------------------------------------------------------- the registered model


def test_serve_and_the_pyfunc_answer_the_same_probability_for_the_same_picture(tmp_path, untrained_detector,
                                                                                 tiny_split_dataset):
    import mlflow
    import pandas as pd

    from deepfake import tracking
    from deepfake.cli.app import load_detector
    from deepfake.inference import META_FILE, ModelMeta, example_frames, pip_requirements, pyfunc_artifacts
    from tests.helpers import tiny_config

    uri_store = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = tiny_config(f"tracking.tracking_uri={uri_store}", "tracking.experiment=serve",
                      f"data.path={tiny_split_dataset}")
    tracking.setup(cfg.tracking)
    with tracking.start_run("serve"):
        tracking.log_config(cfg)
        logged = tracking.log_model(pyfunc_artifacts(untrained_detector),
                                    *example_frames(ModelMeta.load(untrained_detector / META_FILE)),
                                    pip_requirements())
    version = tracking.register_model(logged, "serve-test")
    tracking.set_alias("serve-test", version)
    uri = "models:/serve-test@champion"
    images = sorted((tiny_split_dataset / "test").rglob("*.jpg"))[:3]
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in images]})
    from_pyfunc = mlflow.pyfunc.load_model(uri).predict(frame)["fake_probability"].tolist()

    info = tracking.describe_model(uri)
    with RunningServer(create_app(load_detector(uri, uri_store), ServeConfig(), info)) as running:
        served = [post(running, p.read_bytes()).json()["results"][0]["fake_probability"] for p in images]
        described = requests.get(f"{running.url}/api/model", timeout=30).json()
    assert served == pytest.approx(from_pyfunc, abs=1e-6)
    assert (described["name"], described["version"]) == ("serve-test", version)
    assert described["datasets"] == [Path(tiny_split_dataset).name] and described["uri"] == uri


# --------------------------------------------------------------------------- the OpenVINO runtime


def test_a_keras_model_is_scored_by_its_openvino_conversion_made_once(predictor, tmp_path, one_onnx_conversion,
                                                                      monkeypatch):
    from deepfake import export as X
    from deepfake.server import openvino_scorer

    cfg = ServeConfig(cache_dir=str(tmp_path / "cache"))
    scorer = openvino_scorer(predictor, cfg)
    assert scorer is not None and scorer.is_exported and scorer.meta.format == "openvino"
    images = [jpeg(50 + i) for i in range(5)]
    units = [u for raw in images for u in predictor.prepare(raw).units]
    assert scorer.score_units(units) == pytest.approx(predictor.score_units(units), abs=1e-5)
    monkeypatch.setattr(X, "export", lambda *a, **k: pytest.fail("converted again"))
    assert openvino_scorer(predictor, cfg) is not None  # the next start reads the cache
    assert openvino_scorer(predictor, ServeConfig(runtime="keras")) is None
    with pytest.raises(DeepfakeError, match="already exported"):
        openvino_scorer(scorer, ServeConfig(runtime="openvino"))
    with RunningServer(create_app(predictor, ServeConfig(), scorer=scorer)) as running:
        result = post(running, images[0], params={"explain": "true"}).json()["results"][0]
        assert requests.get(f"{running.url}/api/model", timeout=30).json()["runtime"] == "openvino"
    (expected,) = predictor.predict_values([images[0]])
    assert result["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-5)
    assert result["gradcam"].startswith("data:image/png")  # heat maps still come from the Keras model
