"""The house keeps its floors: no import circle in refbp, and no import from a lower floor to a higher one.

Every import counts: at module level, inside functions, under ``TYPE_CHECKING``, and through
``importlib.import_module`` (a literal name, an f-string on ``__name__``/``__package__``, or,
for a dispatcher that imports by a name it looks up, every refbp module its source names).

The floors, from the ground up (STYLE.md, "The house"):

    1  refbp.nn          layers, networks, losses: the manual backprop;
       refbp.version, refbp.progress, refbp.signals (the version string, a sweep's progress bar,
       stop signals as exceptions: no refbp imports)
    2  refbp.verify      references, finite differences, comparison, verdicts
    3  refbp.models      the GPT and its specs;  refbp.testing (pytest helpers over verify)
    4  refbp.strategies  hypothesis strategies over models and verify;  refbp.distributed
    5  refbp.apps        the command line, reports, the bug catalogue, explain
    6  refbp.examples, refbp.__main__

A package's ``__init__`` that only hands names on (a "face") stands on the floor of its package
(``refbp/__init__.py``, the public face, above every floor it names)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "refbp"

FLOORS = {
    "refbp.nn": 1,
    "refbp.version": 1,
    "refbp.progress": 1,
    "refbp.signals": 1,
    "refbp.verify": 2,
    "refbp.models": 3,
    "refbp.testing": 3,
    "refbp.strategies": 4,
    "refbp.distributed": 4,
    "refbp.apps": 5,
    "refbp.examples": 6,
    "refbp.__main__": 6,
    "refbp": 7,
}
"""Module prefix -> floor; a module takes the floor of its longest matching prefix."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def floor(module: str) -> int:
    best = max((prefix for prefix in FLOORS if module == prefix or module.startswith(prefix + ".")), key=len)
    return FLOORS[best]


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(name: str) -> str | None:
    """The refbp module an imported dotted name lands in (a name inside a module: that module)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _string_of(node: ast.expr, module: str, package: str) -> str | None:
    """A literal module name, or an f-string on __name__ / __package__."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        text = ""
        for part in node.values:
            if isinstance(part, ast.Constant):
                text += str(part.value)
            elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name):
                text += {"__name__": module, "__package__": package}.get(part.value.id, "\0")
            else:
                return None
        return None if "\0" in text else text
    return None


def imports_of(module: str) -> set[str]:
    """Every refbp module that ``module`` imports, by any of the routes the docstring lists."""
    path = MODULES[module]
    package = _package(module, path)
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(filter(None, (_resolve(alias.name) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:  # "from pkg import submodule" imports the submodule
                resolved = _resolve(f"{target}.{alias.name}") or _resolve(target)
                if resolved:
                    found.add(resolved)
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args:
            name = _string_of(node.args[0], module, package)
            if name is None:
                dynamic = True
            elif _resolve(name):
                found.add(_resolve(name))  # type: ignore[arg-type]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "__import__":
            dynamic = True
    if dynamic:  # a dispatcher: every refbp module its source names, absolute or relative
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
                text = node.value
                for name in (text, f"{package}.{text.lstrip('.')}" if text.startswith(".") else None):
                    if name and name in MODULES:
                        found.add(name)
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in GRAPH:
        if start in index:
            continue
        work = [(start, iter(sorted(GRAPH[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_import_graph_is_read_whole() -> None:
    """The reader sees the known routes: a function-level import, an importlib dispatcher, the lazy face."""
    assert "refbp.nn.network" in GRAPH["refbp.nn.mlp"]
    assert GRAPH["refbp"] >= {"refbp.nn.mlp", "refbp.verify.check"}  # the lazy public names
    assert any(module.startswith("refbp.apps.") for module in GRAPH["refbp.apps.cli"])


def test_no_import_circle() -> None:
    assert _circles() == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_back_up(module: str) -> None:
    """A module imports only from its own floor or lower ones."""
    up = sorted(target for target in GRAPH[module] if floor(target) > floor(module))
    assert up == [], f"{module} (floor {floor(module)}) imports from higher floors: " + ", ".join(
        f"{target} (floor {floor(target)})" for target in up
    )
