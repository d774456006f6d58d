"""Configuration: defaults <- YAML <- named options <- --set, with clear errors."""

import pytest

from deepfake import backbones
from deepfake import config as C
from deepfake.errors import DeepfakeError


def test_defaults_are_valid():
    cfg = C.resolve()
    assert cfg.data.class_names == ["real", "fake"]
    assert cfg.model.weights == "auto"
    assert cfg.train.epochs >= 1


def test_yaml_then_overrides_then_set(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data:\n  image_size: 96\n  batch_size: 8\ntrain:\n  epochs: 2\n")
    cfg = C.resolve([y], overrides={"train": {"epochs": 7}}, set_args=["data.batch_size=4", "model.head_units=[64,32]"])
    assert cfg.data.image_size == 96  # from YAML
    assert cfg.train.epochs == 7  # named override beats YAML
    assert cfg.data.batch_size == 4  # --set beats both
    assert cfg.model.head_units == [64, 32]


def test_nested_set_and_bool_coercion():
    cfg = C.resolve(set_args=["data.augment.flip=false", "data.augment.jpeg_prob=0.2"])
    assert cfg.data.augment.flip is False
    assert cfg.data.augment.jpeg_prob == pytest.approx(0.2)


@pytest.mark.parametrize(
    "arg, fragment",
    [
        ("train.epoch=3", "unknown config option 'train.epoch'"),
        ("data.image_size=abc", "data.image_size"),
        ("data.image_size=16", "at least 32"),
        ("model.dropout=1.5", "model.dropout"),
        ("train.fine_tune_stages=9", "fine_tune_stages"),
        ("data.class_names=[real,real]", "class_names"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_option(arg, fragment):
    with pytest.raises(DeepfakeError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        C.resolve(set_args=[arg])


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(DeepfakeError, match="does not exist"):
        C.resolve([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(DeepfakeError, match="not valid YAML"):
        C.resolve([bad])


def test_resolved_config_round_trips(tmp_path):
    cfg = C.resolve(set_args=["train.epochs=3", "model.head_units=[8]"])
    path = cfg.save(tmp_path / "config.yaml")
    again = C.resolve([path])
    assert again == cfg
    flat = cfg.flat()
    assert flat["train.epochs"] == 3 and flat["data.augment.flip"] is True


# README: "The configurations default, demo, ..."
SHIPPED_CONFIGS = ["ai_vs_real", "default", "demo", "dfdc_faces", "general"]


def test_shipped_configs_are_found_by_name():
    assert C.shipped_names() == SHIPPED_CONFIGS


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_resolve_to_their_own_values(name):
    """Each shipped file is valid and every value it sets reaches the resolved configuration."""
    import yaml

    path = C.shipped("configs", f"{name}.yaml")
    written = C.flatten(yaml.safe_load(path.read_text()))
    assert written, f"{name}.yaml sets nothing"
    cfg = C.resolve([name])  # found by name, as --config NAME finds it
    if written.get("data.image_size") == 0:  # 0 means the backbone's native size
        written["data.image_size"] = backbones.get(cfg.model.backbone).native_size
    flat = cfg.flat()
    assert {key: flat[key] for key in written} == written


def test_default_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert C.default_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert C.default_tracking_uri() == "http://example:5000"
    assert C.default_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_on_off_strings_survive_yaml(tmp_path):
    cfg = C.resolve(set_args=["train.jit_compile=off", "train.mixed_precision=off"])
    assert cfg.train.jit_compile == "off" and cfg.train.mixed_precision == "off"
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  jit_compile: on\n")
    assert C.resolve([y]).train.jit_compile == "on"
