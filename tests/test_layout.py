"""The package's shape: one folder per stage, imports one way between stages, no circles.

    .venv/bin/python -m pytest tests/test_layout.py

Every `import` counts, lazy ones inside functions included: a circle hidden in a function is
still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sweep

PACKAGE = Path(sweep.__file__).parent
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `path` imports, at any depth (function bodies included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [base, *(f"{base}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            # the deepest module of the package the name resolves to
            while c and c not in modules:
                c = c.rpartition(".")[0]
            if c and c != name and c != "sweep":
                found.add(c)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_sits_in_a_stage_folder():
    loose = [m for m in _modules() if m.count(".") == 1 and m != "sweep.__main__"]
    stages = {m.split(".")[1] for m in _modules() if m.count(".") >= 1}
    assert not [m for m in loose if m.split(".")[1] not in stages - {"__main__"}], loose
    assert set(sweep.STAGES) == stages - {"__main__"}


def test_each_stage_says_what_it_does_and_what_it_may_import():
    for stage in sweep.STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and "May import:" in doc, stage
        allowed = doc.split("May import:")[1].split(".")[0]
        below = sweep.STAGES[: sweep.STAGES.index(stage)]
        assert all(s in allowed for s in below) or "nothing" in allowed or allowed, stage


def test_stages_import_only_the_stages_below_them():
    order = {s: i for i, s in enumerate(sweep.STAGES)}
    upward = []
    for module, imported in _graph().items():
        if module == "sweep.__main__":
            continue
        for target in imported:
            if order[_stage(target)] > order[_stage(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "a stage imports a stage above it:\n" + "\n".join(sorted(upward))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_anywhere_lazy_imports_included():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_circle_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_the_line_limit():
    long = {
        m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
