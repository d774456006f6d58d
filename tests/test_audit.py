"""Dataset audit: properties that should not tell real from fake (format, size, JPEG quality, EXIF)."""

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
