"""The package's shape: no import circles between deepfake modules, and the layers the README names.

Imports are read from the source with ``ast``, those inside functions included (an import deferred into
a function still ties two modules together), so a circle cannot hide behind a lazy import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import deepfake

PACKAGE = Path(deepfake.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The deepfake module that ``name`` (a module or a name inside one) belongs to."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(module: str) -> set[str]:
    """Dotted names imported anywhere in ``module`` (top level and inside functions)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from deepfake import data`
    return names


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        targets = {_resolve(name) for name in _imported_names(module)}
        graph[module] = {t for t in targets if t and t != module and t != "deepfake"}
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _within(module: str, package: str) -> bool:
    """``module`` is ``package`` (a module or a package) or one of its submodules."""
    return module == package or module.startswith(f"{package}.")


def _reaches(source: str, target: str) -> bool:
    """Whether ``source`` imports ``target``, directly or not; a package stands for all its modules."""
    seen, todo = set(), [m for m in GRAPH if _within(m, source)]
    while todo:
        node = todo.pop()
        if _within(node, target):
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(GRAPH.get(node, ()))
    return False


def test_the_graph_is_read():
    # A sanity check of the reader itself: known imports, at top level and inside a function, are found.
    assert "deepfake.config" in GRAPH["deepfake.pipeline"]
    assert "deepfake.model" in GRAPH["deepfake.inference"]  # imported inside Predictor.from_files
    assert "deepfake.cli.app" in GRAPH["deepfake.cli"]


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("lower, upper, why", [
    ("deepfake.metrics", "deepfake.plots", "plots draw metrics; metrics never draw"),
    ("deepfake.inference", "deepfake.tracking", "inference gets local folders; tracking resolves model URIs"),
    ("deepfake.tracking", "deepfake.inference", "the pyfunc is logged from code (deepfake/pyfunc_model.py)"),
    ("deepfake.training", "deepfake.tracking", "training knows nothing of MLflow"),
    ("deepfake.training", "deepfake.tuning", "training knows nothing of Optuna"),
])
def test_lower_layers_do_not_reach_upper_ones(lower, upper, why):
    assert not _reaches(lower, upper), why


def _third_party_importers(top: str) -> set[str]:
    return {m for m in MODULES if any(n == top or n.startswith(f"{top}.") for n in _imported_names(m))}


def test_only_tracking_talks_to_mlflow_and_only_tuning_to_optuna():
    # deepfake/pyfunc_model.py is MLflow's models-from-code file: MLflow runs it to get the pyfunc.
    mlflow = _third_party_importers("mlflow")
    assert "deepfake.pyfunc_model" in mlflow, mlflow
    assert all(_within(m, "deepfake.tracking") for m in mlflow - {"deepfake.pyfunc_model"}), mlflow
    optuna = _third_party_importers("optuna") | _third_party_importers("optuna_integration")
    assert optuna and all(_within(m, "deepfake.tuning") for m in optuna), optuna


def test_nothing_imports_the_models_from_code_file():
    # It calls mlflow.models.set_model when run; tracking logs it by path, nobody imports it.
    assert not [m for m, targets in GRAPH.items() if "deepfake.pyfunc_model" in targets]


def test_every_command_lives_in_the_cli_file_named_after_it():
    from deepfake.cli import main

    files = {p.stem.replace("_", "-") for p in (PACKAGE / "cli").glob("*.py")} - {"--init--", "app"}
    assert files == set(main.commands)
    for name, command in main.commands.items():
        assert command.callback.__module__ == f"deepfake.cli.{name.replace('-', '_')}", name


def test_readme_layout_names_every_module():
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("Layout: `deepfake/`"):readme.index("## License")]
    named = {name.rstrip("/") for name in re.findall(r"`([^`]+)`", layout)}
    top = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert top | folders <= named, f"not in the README's layout: {sorted((top | folders) - named)}"


def test_cli_choices_come_from_their_constants():
    from deepfake.cli import main
    from deepfake.data import SPLITS
    from deepfake.export import FORMATS
    from deepfake.objectives import METRICS

    def choices(command, option):
        (param,) = [p for p in main.commands[command].params if p.name == option]
        return tuple(param.type.choices)

    assert choices("tune", "metric") == tuple(METRICS)
    assert choices("export", "fmt") == FORMATS
    assert choices("sample", "split") == SPLITS
    assert choices("evaluate", "split") == ("auto", "all", *SPLITS)
