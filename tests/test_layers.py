"""Imports only point down the layers the README describes: library <- stages <- cli / pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vitnas"
LIBRARY = ("families", "space", "models", "supernet", "proxies", "search", "slim", "train", "transfer", "data")
STAGES = ("data", "supernet", "proxy", "search", "slim", "retrain", "transfer", "latency")


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_the_library_knows_nothing_of_stages_kfp_dvc_or_mlflow():
    for pkg in LIBRARY:
        for f in (SRC / pkg).rglob("*.py"):
            bad = {m for m in imports(f) if m.split(".")[0] in ("kfp", "dvc", "mlflow", "components", "pipelines")
                   or m.startswith(("vitnas.stages", "vitnas.pipeline", "vitnas.cli", "vitnas.tracking"))}
            assert not bad, f"{f.relative_to(SRC)} imports {sorted(bad)}"


def test_stage_modules_do_not_import_each_other_or_point_up():
    for name in STAGES:
        f = SRC / "stages" / f"{name}.py"
        bad = {m for m in imports(f) if m in {f"vitnas.stages.{s}" for s in STAGES}
               or m.startswith(("vitnas.pipeline", "vitnas.cli", "components", "pipelines", "kfp"))}
        assert not bad, f"stages/{name}.py imports {sorted(bad)}"


def test_nothing_in_the_package_imports_the_top_level_entry_points():
    for f in SRC.rglob("*.py"):
        bad = {m for m in imports(f) if m.split(".")[0] in ("components", "pipelines")}
        assert not bad, f"{f.relative_to(SRC)} imports {sorted(bad)}"


def test_no_modules_import_each_other_around_a_circle():
    """A circle of imports (a <-> b, or a -> b -> c -> a) makes import order matter and hides which
    module owns what; lazy imports inside functions count too, `if TYPE_CHECKING:` ones do not."""
    from vitnas.stages._code_deps import import_cycles

    assert import_cycles() == []
