"""Dependency floors: .ci/floor-constraints.txt pins every requirement of pyproject.toml (its extras
included) at exactly the floor pyproject.toml declares, so that CI's floor run (`make test-floor`) tests the
versions users may install."""

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


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
        for extra in req.extras:  # psycopg[binary] -> psycopg-binary, released in step
            assert pins[canonicalize_name(f"{req.name}-{extra}")] == pins[name]


def test_the_floor_run_pins_nothing_else():
    names = {canonicalize_name(r.name) for r in requirements()}
    names |= {canonicalize_name(f"{r.name}-{e}") for r in requirements() for e in r.extras}
    assert set(floor_pins()) == names
