"""Content digests of files and directories: what fingerprints and lineage records compare."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

_SKIP = (".vitnas-output.json",)  # vitnas's output marker says who wrote a directory, not what it holds
# Folders whose files a manifest beside them pins by digest: the manifest stands for them, so a
# data directory's digest does not read every shard again (shards.json lists each shard's sha256).
_PINNED = {"shards": "shards.json"}


def _update(h, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes. Remembered per (path, size, mtime): a stage that
    fingerprints its supernet and records it for lineage reads the file once."""
    path = Path(path).resolve()
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    _update(h, Path(path))
    return h.hexdigest()


def path_digest(path: str | Path) -> str:
    """16 hex digits: of a file's bytes, or of a directory's files (relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)[:16]
    h = hashlib.sha256()
    pinned = tuple(path / d for d, manifest in _PINNED.items() if (path / manifest).is_file())
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name not in _SKIP
                    and not any(d in p.parents for d in pinned)):
        h.update(f"{f.relative_to(path)}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()[:16]
