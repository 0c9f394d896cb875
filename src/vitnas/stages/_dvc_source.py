"""DVC-tracked datasets in a git repository (`data.dvc_repo`, `data.dvc_rev`, `data.root` the path
inside it), read through `dvc.api`'s file system. Registered with the library's readers here, in
the stage layer: the library itself knows nothing of DVC."""

from __future__ import annotations

import os

from vitnas.data import store
from vitnas.errors import DataError

PREFIX = "dvc::"
_FS: dict[tuple, object] = {}


def dvc_root(repo: str, rev: str | None, path: str) -> str:
    """The one-string form of (repo, rev, path) that travels as a dataset root."""
    return f"{PREFIX}{repo}::{rev or ''}::{path.strip('/')}"


def _open(root: str) -> tuple[object, str]:
    repo, rev, path = root[len(PREFIX):].rsplit("::", 2)
    key = (os.getpid(), repo, rev)
    if key not in _FS:  # one per process
        from dvc.api import DVCFileSystem

        try:
            _FS[key] = DVCFileSystem(repo, rev=rev or None)
        except Exception as e:  # dvc raises many types: no repository, no such revision, no git
            raise DataError(f"data.dvc_repo: {repo}{f'@{rev}' if rev else ''}: cannot open it as a DVC repository "
                            f"({type(e).__name__}: {str(e).strip()[:120]})") from None
    return _FS[key], path


store.register_filesystem(PREFIX, _open)
