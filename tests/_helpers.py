"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VITNAS = str(Path(sys.executable).parent / "vitnas")  # the installed console script, as a user's shell runs it


def vitnas_process(*args, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`vitnas ARGS` in a fresh process: what a user's shell sees (startup, warnings, exit code).
    For most checks the in-process `cli` fixture is faster."""
    return subprocess.run([VITNAS, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)
