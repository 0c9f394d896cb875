"""The source files a stage runs, found from its imports: what dvc.yaml lists as its code deps.

A hand-kept list drifts (a shared helper the stages import was in none, so editing it never made
`dvc repro` rerun them). Every `import vitnas...` in a module (at the top or inside a function, as
lazy imports are) is followed from `vitnas.stages.<stage>`, with the `__init__` of every package on
the way (importing a module runs them). Two exceptions, whose function-level imports are not
followed: `vitnas.config` imports the search and proxy modules inside its cross-checks to validate
their keys (validation decides whether a stage runs, never what it computes; else editing the
search would retrain the supernet), and `vitnas.stages.contract` imports this module to write
dvc.yaml. A package whose every file is reached is listed as its folder, else its
files one by one. Registries count as imports for this (not for circles): a module that reaches
`vitnas.families` runs every registered family's module (`FAMILIES`, imported by name), and a
lazy package (`vitnas.search`: a `_HOME` map of names to submodules) every submodule it maps.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # src/vitnas
ROOT = "vitnas"
TOP_LEVEL_ONLY = frozenset({"vitnas.config", "vitnas.stages.contract"})  # lazy imports not followed


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (annotations only: never runs)."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                                         or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST) -> list[ast.AST]:
    """Every node, but not inside `if TYPE_CHECKING:` blocks."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        todo += [c for c in ast.iter_child_nodes(node) if not _is_type_checking(c)]
    return out


def _top_level(tree: ast.Module) -> list[ast.AST]:
    """The statements run at import: the module body, into `if`/`try` blocks, not into functions."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)) and not _is_type_checking(node):
            todo += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                     *(h for handler in getattr(node, "handlers", []) for h in handler.body)]
    return out


def _file(module: str) -> Path | None:
    """The source file of a `vitnas...` module, None for a name that is not a module."""
    parts = module.split(".")[1:]
    if not parts:
        return PACKAGE / "__init__.py"
    rel = Path(*parts)
    for candidate in (PACKAGE / rel / "__init__.py", PACKAGE / rel.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imported(module: str) -> frozenset[str]:
    """The `vitnas` modules `module` imports anywhere in its source (names that are not modules,
    as in `from vitnas.x import name`, resolve to `vitnas.x`)."""
    path = _file(module)
    if path is None:
        return frozenset()
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in _top_level(tree) if module in TOP_LEVEL_ONLY else _walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == ROOT)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != ROOT:
                continue
            subs = {f"{base}.{a.name}" for a in node.names if _file(f"{base}.{a.name}") is not None}
            found.update(subs)
            if len(subs) < len(node.names):  # names defined in `base` itself (its parents run anyway)
                found.add(base)
    return frozenset(m for m in found if _file(m) is not None)


def modules() -> list[str]:
    """Every module of the package."""
    out = []
    for p in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" not in p.parts:
            parts = [ROOT, *p.relative_to(PACKAGE).with_suffix("").parts]
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def import_cycles() -> list[list[str]]:
    """Modules that import each other, directly or around a circle (imports of a module's own
    parent packages aside: Python runs those first anyway), as strongly connected components."""
    graph = {m: {n for n in _imported(m) if not m.startswith(n + ".")} for m in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    return cycles


@cache
def _registered(module: str) -> frozenset[str]:
    """The modules a registry in `module` imports by name on first use: the families, and the
    submodules of a lazy package (a top-level `_HOME = {name: submodule}`, PEP 562)."""
    if module == f"{ROOT}.families":
        from vitnas.families import FAMILIES

        return frozenset(path for path, _ in FAMILIES.values())
    path = _file(module)
    if path is None or path.name != "__init__.py":
        return frozenset()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_HOME" for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            return frozenset(f"{module}.{v.value}" for v in node.value.values if isinstance(v, ast.Constant))
    return frozenset()


def closure(module: str) -> set[Path]:
    """Every source file importing `module` runs: its own, what it imports, transitively, and the
    `__init__.py` of each package on the way."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the parent packages
        todo += _imported(m) | _registered(m)
    return {f for m in seen if (f := _file(m)) is not None}


def _collapse(files: set[Path], folder: Path) -> list[Path]:
    """`files` under `folder`, with each subfolder whose every source file is in `files` as one entry."""
    sources = sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    if folder != PACKAGE and sources and all(p in files for p in sources):
        return [folder]
    out = [p for p in sorted(folder.glob("*.py")) if p in files]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"):
        out += _collapse(files, sub)
    return out


def code_deps(stage: str) -> list[str]:
    """The code deps of `vitnas.stages.<stage>`, as repository paths (`src/vitnas/...`)."""
    files = closure(f"{ROOT}.stages.{stage}")
    return [f"src/{ROOT}/{p.relative_to(PACKAGE).as_posix()}" for p in _collapse(files, PACKAGE)]
