"""Every public function of the package has a typed signature (read from the source with ``ast``)."""

import ast
from pathlib import Path

import deepfake

PACKAGE = Path(deepfake.__file__).parent
# MLflow reads the type hints of a PythonModel's ``predict`` to validate (and convert) its input: typing it
# is a change of what the served model accepts, not a matter of documentation.
NOT_CHECKED = {"deepfake/pyfunc_model.py:DeepfakePyfunc.predict"}


def _untyped(body: list[ast.stmt], where: str, prefix: str = "") -> list[str]:
    found = []
    for node in body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            found += _untyped(node.body, where, f"{prefix}{node.name}.")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("_") and node.name != "__init__":
                continue
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]
            missing = [p.arg for p in params if p.annotation is None and p.arg not in ("self", "cls")]
            if node.returns is None and node.name != "__init__":
                missing.append("return")
            name = f"{where}:{prefix}{node.name}"
            if missing and name not in NOT_CHECKED:
                found.append(f"{name} ({', '.join(missing)}) line {node.lineno}")
    return found


def test_public_functions_have_type_hints():
    untyped = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE.parent).as_posix()
        untyped += _untyped(ast.parse(path.read_text()).body, where)
    assert not untyped, "public functions without type hints:\n" + "\n".join(untyped)


def test_the_check_sees_a_missing_hint():
    source = "def f(x, y: int) -> int: ...\nclass C:\n    def m(self) -> None: ...\n    def n(self, z): ...\n"
    assert [s.split(" line")[0] for s in _untyped(ast.parse(source).body, "m.py")] == ["m.py:f (x)",
                                                                                       "m.py:C.n (z, return)"]
