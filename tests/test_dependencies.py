"""Dependency floors: .ci/floor-constraints.txt pins every requirement of pyproject.toml (its extras
included) at exactly the floor pyproject.toml declares, so that CI's floor run (`make test-floor`) tests the
versions users may install. And TensorFlow, one of two builds of one module, comes from exactly one of the
extras `cpu` and `gpu`, which every install names."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
# A requirement's extra that is a package released in step with it: psycopg[binary] -> psycopg-binary.
# (tensorflow[and-cuda] brings NVIDIA's CUDA wheels at the versions each TensorFlow release pins itself.)
STEP_EXTRAS = {"psycopg": {"binary"}}
TENSORFLOW = {"tensorflow", "tensorflow-cpu"}  # two builds of one `tensorflow` module: never both installed


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts.extend(t for t in extra if not t.startswith("deepfake["))  # an extra naming another extra
    return [Requirement(t) for t in texts]


def floor_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / ".ci" / "floor-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_every_requirement_has_a_floor_and_the_floor_run_installs_it():
    pins = floor_pins()
    for req in requirements():
        floors = [s.version for s in req.specifier if s.operator in (">=", "~=")]
        assert len(floors) == 1, f"{req}: needs one floor (>= or ~=)"
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in .ci/floor-constraints.txt"
        assert Version(pins[name]) == Version(floors[0]), f"{req.name}: floor {floors[0]}, floor run {pins[name]}"
        assert req.specifier.contains(pins[name]), f"{req}: excludes its own floor {pins[name]}"
        for extra in req.extras & STEP_EXTRAS.get(name, set()):  # psycopg[binary] -> psycopg-binary
            assert pins[canonicalize_name(f"{req.name}-{extra}")] == pins[name]


def test_the_floor_run_pins_nothing_else():
    names = {canonicalize_name(r.name) for r in requirements()}
    names |= {canonicalize_name(f"{r.name}-{e}") for r in requirements()
              for e in r.extras & STEP_EXTRAS.get(canonicalize_name(r.name), set())}
    assert set(floor_pins()) == names


def tensorflow_builds(requirements: list[str], extras: set[str]) -> set[str]:
    """The TensorFlow distributions installing deepfake with ``extras`` would bring, on Linux x86-64."""
    env = {"platform_machine": "x86_64", "sys_platform": "linux"}
    found = set()
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) in TENSORFLOW and (req.marker is None or req.marker.evaluate(env)):
            found.add(canonicalize_name(req.name))
    for extra in extras:
        for text in requirements_of_extra(extra):
            found |= tensorflow_builds([text], set())
    return found


def requirements_of_extra(extra: str) -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = []
    for text in project["optional-dependencies"][extra]:
        if text.startswith("deepfake["):
            texts += [t for e in Requirement(text).extras for t in requirements_of_extra(e)]
        else:
            texts.append(text)
    return texts


def test_tensorflow_comes_from_exactly_one_of_the_extras_cpu_and_gpu():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = project["dependencies"]
    assert tensorflow_builds(base, set()) == set(), "a base TensorFlow could not be swapped for the GPU build"
    assert tensorflow_builds(base, {"cpu"}) == {"tensorflow-cpu"}
    assert tensorflow_builds(base, {"gpu"}) == {"tensorflow"}
    assert "and-cuda" in Requirement(project["optional-dependencies"]["gpu"][0]).extras
    for extra in set(project["optional-dependencies"]) - {"cpu", "gpu"}:  # so `.[gpu,dev]` brings one build
        assert tensorflow_builds(base, {extra}) == set(), f"extra {extra} brings TensorFlow"


def test_every_install_of_the_project_names_the_cpu_extra():
    """make install, the floor run (both run by .ci/run) and the MLproject environment install `.[cpu,...]`."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^EXTRAS \?= cpu,dev$", makefile, re.M)
    installs = re.findall(r"pip install .*-e \"\.\[([^\]]*)\]\"", makefile)
    assert installs == ["$(EXTRAS)", "cpu,dev"], installs  # make install, make test-floor
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    (pip,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    assert pip[-1] == ".[cpu]"


def test_without_tensorflow_a_command_stops_with_the_install_hint(tiny_split_dataset, tmp_path):
    """Installed without the extras cpu and gpu: one line naming both, exit code 2, no traceback."""
    code = ("import sys; sys.modules['tensorflow'] = None  # as if not installed\n"
            "from deepfake.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code, "train", "--data", str(tiny_split_dataset)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "Error: TensorFlow is not installed: pip install 'deepfake[cpu]' (or 'deepfake[gpu]' on Linux with an "
        "NVIDIA GPU)")
    assert "Traceback" not in out.stderr
