"""One direction of imports: no module of backprop imports (even inside a function) a module that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import backprop

ROOT = Path(backprop.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["backprop", *parts])


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        found[module_name(path)] = path
    return found


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The backprop modules ``path`` imports anywhere in its body (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
    return {target for target in targets if target in known and target != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_sees_lazy_imports_and_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    known = set(modules())
    assert "backprop.training" in imported(ROOT / "model.py", "backprop.model", known)  # imported inside fit()


def test_no_module_imports_a_module_that_imports_it_back():
    found = modules()
    graph = {name: imported(path, name, set(found)) for name, path in found.items()}
    # A package's __init__ re-exports its modules; a module importing its own package's names goes one way only.
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_package_ships_its_type_hints():
    """PEP 561: a ``py.typed`` marker in the package, listed as package data so that wheels carry it."""
    import importlib.resources

    assert importlib.resources.files("backprop").joinpath("py.typed").is_file()
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\nbackprop = ["py.typed"]' in pyproject
