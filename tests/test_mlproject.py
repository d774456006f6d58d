"""MLproject entry points mirror the CLI, and conda.yaml has the dependencies pyproject.toml has."""

from pathlib import Path

import click
import pytest
import tomllib
import yaml
from click.testing import CliRunner
from packaging.specifiers import SpecifierSet

from deepfake import config as C
from deepfake.cli import main
from deepfake.cli.app import OPTION_TO_CONFIG

REPO = Path(__file__).resolve().parents[1]
ENTRY_TO_COMMAND = {"main": "suite", "demo_data": "demo-data", "train": "train", "tune": "tune",
                    "evaluate": "evaluate", "sample": "sample", "predict": "predict", "crossval": "crossval",
                    "export": "export"}
NOT_MIRRORED = {"set_args", "help", "version", "verbose"}  # repeatable --set has no MLproject form


def mlproject():
    return yaml.safe_load((REPO / "MLproject").read_text())


def cli_params(command: click.Command) -> dict[str, click.Parameter]:
    out = {}
    for p in command.params:
        if isinstance(p, click.Option):
            long = max(p.opts, key=len).lstrip("-").replace("-", "_")
        else:
            long = p.name
        if p.name not in NOT_MIRRORED:
            out[long] = p
    return out


def test_every_entry_point_is_a_command():
    points = mlproject()["entry_points"]
    assert set(ENTRY_TO_COMMAND) == set(points)
    for name in points:
        assert ENTRY_TO_COMMAND[name] in main.commands, name


@pytest.mark.parametrize("entry", sorted(mlproject()["entry_points"]))
def test_parameters_mirror_cli_options(entry):
    spec = mlproject()["entry_points"][entry]
    command = main.commands[ENTRY_TO_COMMAND[entry]]
    options = cli_params(command)
    assert set(spec["parameters"]) == set(options), f"{entry}: MLproject and `deepfake {command.name}` differ"
    assert "$(" not in spec["command"] and "[ " not in spec["command"], f"{entry}: no shell in the command"
    # Entry points with a config file take their override defaults from it (as the CLI would).
    config_file = spec["parameters"].get("config", {}).get("default")
    defaults = C.resolve([config_file]).flat() if config_file else {}  # a shipped config's name
    for name, param_spec in spec["parameters"].items():
        option = options[name]
        assert f"{{{name}}}" in spec["command"], f"{entry}: parameter {name} is not used in the command"
        if isinstance(option, click.Option) and option.is_flag:
            assert param_spec["type"] == "string" and param_spec["default"] in ("true", "false")
            assert f"{max(option.opts, key=len)}={{{name}}}" in spec["command"], f"{entry}: pass --flag={{{name}}}"
            assert (param_spec["default"] == "true") == (option.default is True), f"{entry}.{name}"
            continue
        kind = {"int": (click.types.IntParamType,), "float": (click.types.FloatParamType,)}.get(param_spec["type"])
        if kind:
            assert isinstance(option.type, kind), f"{entry}.{name}: type {param_spec['type']} vs {option.type}"
        default = option.default
        if isinstance(default, (list, tuple)):
            default = default[0] if default else None
        if default in (None, click.core.UNSET) if hasattr(click.core, "UNSET") else default is None:
            expected = defaults.get(OPTION_TO_CONFIG.get(name))
            if expected not in (None, []):  # an empty list (data.mix) is the option not given: ""
                # An override with no CLI default: the MLproject default is the config file's value.
                assert param_spec["default"] == expected, f"{entry}.{name}"
            continue
        assert param_spec["default"] == default, f"{entry}.{name}: {param_spec['default']!r} != CLI {default!r}"


@pytest.mark.parametrize("args, expected", [
    (["--faces=true", "--resume=false", "--register=true"], {"faces": True, "resume": False, "register": True}),
    (["--faces=false", "--register=0"], {"faces": False, "register": False}),  # --faces=false is --no-faces
    (["--faces", "--resume"], {"faces": True, "resume": True}),  # the plain flags still work
    (["--frames=", "--epochs=", "--epochs=3"], {"frames": None, "epochs": 3}),  # an empty value is not given
])
def test_flags_take_true_or_false_and_empty_values_are_not_given(args, expected):
    """What MLproject passes: --flag={param} with "true"/"false", --option={param} with "" for not given."""
    params = main.commands["train"].make_context("train", args).params
    assert {k: params[k] for k in expected} == expected


def test_a_flag_given_anything_but_true_or_false_is_one_line_error():
    result = CliRunner().invoke(main, ["train", "--data", ".", "--faces=maybe"])
    assert result.exit_code == 2
    assert "--faces=maybe: give --faces=true or --faces=false" in result.output
    assert "Traceback" not in result.output


def test_conda_env_has_the_same_dependencies_as_pyproject():
    assert mlproject()["conda_env"] == "conda.yaml"  # MLflow allows one environment file
    assert "python_env" not in mlproject() and not (REPO / "python_env.yaml").exists()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    env = yaml.safe_load((REPO / "conda.yaml").read_text())
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    # then the project itself, with TensorFlow for the CPU (the extra `cpu`; `gpu` is the other build)
    assert pip == [*pyproject["project"]["dependencies"], ".[cpu]"]
    # What --env-manager virtualenv and uv make of it (MLflow's own reading of a conda file).
    from mlflow.utils.environment import _PythonEnv

    python_env = _PythonEnv.from_conda_yaml(REPO / "conda.yaml")
    assert python_env.dependencies == pip
    assert set(python_env.build_dependencies) == {"pip", *pyproject["build-system"]["requires"]}
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(python_env.python)


@pytest.mark.slow
def test_mlflow_run_executes_an_entry_point(tmp_path):
    """`mlflow run .` parses the MLproject and runs an entry point through the CLI."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", "demo_data",
         "-P", f"out={out}", "-P", "per_class=10", "-P", "size=32"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.rglob("*.jpg"))) == 20
