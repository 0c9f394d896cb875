"""Stage output helpers: outputs appear whole or not at all, and only where vitnas may write.

A stage replaces an output directory only when vitnas wrote it: it holds the marker file
`.vitnas-output.json` naming the stage, or nothing but files the stage itself writes (outputs made
before markers existed, or checked out by DVC). Anything else is refused before any work, unless
`force` is given, and even then never a file, the working directory, the repository, the home
directory or a directory holding one of the run's inputs. One writer at a time: a lock file beside
the output serialises runs, and the leftovers of an interrupted write are removed under it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vitnas.errors import ArtifactError
from vitnas.stages.contract import STAGES

MARKER = ".vitnas-output.json"
MARKER_FORMAT = "vitnas-output/1"

# What each stage writes into its output directory (its contract); a directory holding only these
# (and the marker) is recognised as that stage's output even without a marker.
STAGE_FILES: dict[str, frozenset[str]] = {name: s.files for name, s in STAGES.items()} | {
    "checkpoints": frozenset({"checkpoint.pt"}),
}


def _is_rank0() -> bool:
    """Under torchrun only rank 0 writes outputs (and so claims them)."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def _protected(inputs: Iterable[str | Path | None]) -> list[tuple[Path, str]]:
    """Paths an output may never be, nor contain: (resolved path, what it is)."""
    cwd = Path.cwd().resolve()
    out = [(cwd, "the current directory"), (Path(cwd.anchor), "the file system root")]
    home = os.environ.get("HOME")
    if home:
        out.append((Path(home).resolve(), "the home directory"))
    for d in (cwd, *cwd.parents):
        if (d / ".git").exists():
            out.append((d, "the repository root"))
            break
    for p in inputs:
        if p is not None and str(p):
            out.append((Path(p).resolve(), f"an input of this run ({p})"))
    return out


def _recognised(out: Path, stage: str) -> tuple[bool, str]:
    """(True, "") when `out` may be replaced by `stage`, else (False, why)."""
    entries = sorted(os.listdir(out))
    if not entries:
        return True, ""
    marker = out / MARKER
    if marker.is_file():
        try:
            written_by = json.loads(marker.read_text()).get("stage")
        except (ValueError, UnicodeDecodeError, AttributeError, OSError):
            written_by = None
        if written_by == stage:
            return True, ""
        if isinstance(written_by, str):
            return False, f"it holds the output of `vitnas {written_by}`, not of `vitnas {stage}`"
    foreign = [e for e in entries if e != MARKER and e not in STAGE_FILES.get(stage, ())]
    if not foreign:
        return True, ""
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return False, f"it holds files vitnas did not write ({shown})"


def check_output(out: str | Path, stage: str, *, force: bool = False,
                 inputs: Iterable[str | Path | None] = ()) -> Path:
    """Raise `ArtifactError` (one line naming the path) unless `stage` may write `out`."""
    out = Path(out)
    if not str(out).strip():
        raise ArtifactError("--out: empty path")
    if out.is_symlink():
        raise ArtifactError(f"{out}: is a symbolic link; vitnas writes a directory of its own there, so give the "
                            "real path")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory; vitnas never replaces a file")
    real = out.resolve()
    for path, what in _protected(inputs):
        if _contains(real, path):
            what = what if real == path else f"a directory holding {what}"
            raise ArtifactError(f"{out}: refusing to write an output there: it is {what}")
    if out.is_dir():
        ok, why = _recognised(out, stage)
        if not ok and not force:
            raise ArtifactError(f"{out}: not replaced: {why}; choose another output directory, or pass --force")
    return out


def check_output_file(path: str | Path, fmt: str, *, force: bool = False) -> Path:
    """A single-file output (e.g. a latency table) may replace only a JSON file of format `fmt`
    (vitnas's own), or any file with `force`; never a directory or a symbolic link."""
    path = Path(path)
    if path.is_symlink() or path.is_dir():
        raise ArtifactError(f"{path}: is a {'symbolic link' if path.is_symlink() else 'directory'}; "
                            "vitnas writes a file of its own there, so give another path")
    if path.exists() and not force:
        try:
            ours = json.loads(path.read_text()).get("format") == fmt
        except (ValueError, UnicodeDecodeError, AttributeError, OSError):
            ours = False
        if not ours:
            raise ArtifactError(f"{path}: not replaced: it exists and vitnas did not write it (not a {fmt} file); "
                                "choose another path, or pass --force")
    return path


@contextmanager
def claim_output(out: str | Path, stage: str, *, force: bool = False,
                 inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Check that `stage` may write `out`, then hold its lock for the block (one writer at a time)
    and remove leftovers of an interrupted write. On ranks other than 0 only the check is skipped."""
    out = Path(out)
    if not _is_rank0():
        yield out
        return
    check_output(out, stage, force=force, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the holder removes the lock file when done: a lock on a removed file is no lock
            locked = os.path.exists(lock_path) and os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except BlockingIOError:
            pass
        if not locked:
            raise ArtifactError(f"{out}: another vitnas process is writing it (lock {lock_path}); wait for it "
                                "to finish")
        for kind in ("tmp", "old"):  # what an interrupted atomic_dir leaves beside `out`
            for leftover in out.parent.glob(f".{out.name}.{kind}-*"):
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() and not leftover.is_symlink() \
                    else leftover.unlink(missing_ok=True)
        yield out
    finally:
        if locked:
            os.unlink(lock_path)
        os.close(fd)  # releases the lock


def mark(directory: Path, stage: str) -> None:
    """Write the marker that lets `stage` replace `directory` later."""
    write_json(directory / MARKER, {"format": MARKER_FORMAT, "stage": stage})


@contextmanager
def atomic_dir(out: str | Path, stage: str) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it (marked as `stage`'s) replaces `out`, on
    failure it is deleted. The caller has claimed `out` (`claim_output`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only
    try:
        yield tmp
        mark(tmp, stage)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, out)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The contract's metrics.json: a flat mapping of names to numbers."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"metric {k!r} is not a number: {v!r}")
        out[k] = v
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
