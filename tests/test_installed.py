"""Installed, not cloned: the shipped configs and search spaces are package data, found from any folder."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml
from click.testing import CliRunner

from deepfake import config as C
from deepfake import tracking, tuning
from deepfake.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIGS = ["ai_vs_real", "default", "demo", "dfdc_faces", "general"]
SHIPPED_SPACES = ["search_space", "search_space_demo", "search_space_faces"]


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch):
    """A working directory that is not the repository (as for everyone who pip-installs the package)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The project's wheel, built as `pip install .` would build it, from a copy of what it is built from (a
    build/ folder left in the checkout would otherwise hand files to the new wheel)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for name in ("deepfake", C.SHIPPED):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("deepfake-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_carries_the_top_level_experiments_folder(wheel):
    """One copy in git (the top-level experiments/); the wheel carries it as deepfake/experiments/."""
    assert not (REPO / "deepfake" / C.SHIPPED).exists(), "one source of truth: the top-level experiments/"
    in_git = sorted(p.relative_to(REPO).as_posix() for p in (REPO / C.SHIPPED).rglob("*.yaml"))
    assert sorted(Path(p).stem for p in in_git if p.startswith(f"{C.SHIPPED}/{C.CONFIGS}/")) == SHIPPED_CONFIGS
    assert sorted(Path(p).stem for p in in_git if "/" not in p[len(C.SHIPPED) + 1:]) == SHIPPED_SPACES
    names = set(wheel.namelist())
    for path in in_git:
        assert f"deepfake/{path}" in names, path
        assert wheel.read(f"deepfake/{path}") == (REPO / path).read_bytes(), path


def test_the_wheel_carries_every_package(wheel):
    """pyproject.toml lists the packages by name (experiments/ is mapped in): a new subpackage must be listed."""
    names = set(wheel.namelist())
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "deepfake").rglob("__init__.py")}
    assert on_disk | {"deepfake.experiments"} == set(packages)
    for package in packages:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    for module in (REPO / "deepfake").rglob("*.py"):
        assert module.relative_to(REPO).as_posix() in names, module


def test_tune_default_search_space_loads_from_any_folder(elsewhere, monkeypatch):
    """`deepfake tune` without --search-space, run outside the repository, gets the shipped search space."""
    seen = {}

    def fake_tune(cfg, *, search_space, **kwargs):  # the study itself is not the point here
        if not isinstance(search_space, tuning.SearchSpace):
            search_space = tuning.load_search_space(search_space)
        seen["search_space"] = search_space
        return tuning.StudyResult("s", "run", None, None, {}, None, None, 0, 0, 0, 0.0)

    monkeypatch.setattr(tracking, "setup", lambda tracking_config: "sqlite:///unused.db")
    monkeypatch.setattr(tuning, "tune", fake_tune)
    result = CliRunner().invoke(main, ["tune", "--data", str(elsewhere), "--study-name", "s", "--no-register"])
    assert result.exit_code == 0, result.output
    shipped = yaml.safe_load(C.shipped("search_space.yaml").read_text())
    assert seen["search_space"].params == shipped["params"]


@pytest.mark.parametrize("command, default", [("tune", "search_space"), ("suite", "search_space_demo")])
def test_help_names_the_shipped_defaults_and_they_load(elsewhere, command, default):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"[default: {default}]" in text
    for name in SHIPPED_SPACES:
        assert name in text
    option = next(p for p in main.commands[command].params if p.name == "search_space")
    assert tuning.load_search_space(option.default).params


@pytest.mark.parametrize("value", ["demo", "demo.yaml", "experiments/configs/demo.yaml"])
def test_shipped_configs_resolve_by_name_from_any_folder(elsewhere, value):
    assert C.resolve([value]) == C.resolve([C.shipped("configs", "demo.yaml")])


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_resolves_from_any_folder(elsewhere, name):
    values = yaml.safe_load(C.shipped("configs", f"{name}.yaml").read_text())
    assert C.resolve([name]) == C.from_dict(values)


@pytest.mark.parametrize("value", ["search_space_demo", "search_space_demo.yaml", "experiments/search_space_demo.yaml"])
def test_shipped_search_spaces_resolve_by_name_from_any_folder(elsewhere, value):
    shipped = tuning.load_search_space(C.shipped("search_space_demo.yaml"))
    assert tuning.load_search_space(value).params == shipped.params


def test_a_file_the_user_gives_wins(elsewhere):
    (elsewhere / "demo.yaml").write_text("train:\n  epochs: 7\n")
    (elsewhere / "search_space.yaml").write_text("params:\n  model.dropout: {type: float, low: 0.1, high: 0.2}\n")
    assert C.resolve(["demo.yaml"]).train.epochs == 7
    assert C.resolve([str(elsewhere / "demo.yaml")]).train.epochs == 7
    assert list(tuning.load_search_space("search_space.yaml").params) == ["model.dropout"]
    # The defaults are names, not file names: a file in the working directory does not replace them.
    assert C.resolve(["demo"]).train.epochs == C.resolve([C.shipped("configs", "demo.yaml")]).train.epochs != 7
    assert len(tuning.load_search_space("search_space").params) > 1


@pytest.mark.parametrize("args, message", [
    (["train", "--data", ".", "--config", "nope"],
     "Error: config file nope does not exist; give a YAML file or a shipped config: ai_vs_real, default, demo"),
    (["tune", "--data", ".", "--study-name", "s", "--search-space", "nope.yaml"],
     "Error: --search-space nope.yaml: no such file; give a YAML file or a shipped search space: "
     "search_space, search_space_demo"),
    (["train", "--data", ".", "--config", "other/demo.yaml"], "Error: config file other/demo.yaml does not exist"),
])
def test_unknown_names_list_the_shipped_ones(elsewhere, args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.output


def test_the_wheel_carries_the_face_mesh_model_and_its_notice(wheel):
    """deepfake/assets/ is package data, not a package: the ONNX face mesh and its Apache-2.0 NOTICE ship."""
    names = set(wheel.namelist())
    for name in ("face_landmark.onnx", "NOTICE"):
        path = f"deepfake/assets/{name}"
        assert path in names and wheel.read(path) == (REPO / path).read_bytes(), path
