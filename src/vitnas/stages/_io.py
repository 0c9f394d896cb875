"""Stage output helpers: outputs appear whole or not at all, and only where vitnas may write.

A stage replaces an output directory only when vitnas wrote it: it holds the marker file
`.vitnas-output.json` naming the stage, or nothing but files the stage itself writes (outputs made
before markers existed, or checked out by DVC). Anything else is refused before any work, unless
`force` is given, and even then never a file, the working directory, the repository, the home
directory or a directory holding one of the run's inputs. One writer at a time: a lock file beside
the output serialises runs, and the leftovers of an interrupted write are removed under it: only
those that carry the tag vitnas puts in every temp and old directory it makes (a user's
`.out.old-backup/` is never touched), and the lock file only by the process that created it or when
it holds vitnas's lock record (never a user's file that happens to have the name).

Single-file outputs (a latency table, dvc.yaml, a compiled pipeline, an export, an imported
supernet) follow one rule, `check_output_file`: never a symbolic link, a directory or one of the
run's inputs; an existing file is replaced only when vitnas wrote it (each kind says how it knows),
never a file vitnas did not write, `--force` or not.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitnas.errors import ArtifactError
from vitnas.files import atomic_file, output_mode, umask
from vitnas.stages.contract import STAGES

MARKER = ".vitnas-output.json"
MARKER_FORMAT = "vitnas-output/1"
# In every temp and old directory vitnas makes beside an output: names the directory itself, so only
# vitnas's own leftovers are removed (a copy or a user's directory of that name pattern is not).
LEFTOVER_TAG = ".vitnas-leftover.json"
LEFTOVER_FORMAT = "vitnas-leftover/1"
LOCK_FORMAT = "vitnas-lock/1"

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
    foreign = [e for e in entries if e not in (MARKER, LEFTOVER_TAG) and e not in STAGE_FILES.get(stage, ())]
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


@dataclass(frozen=True)
class FileKind:
    """A kind of single-file output: what it is called, how vitnas knows it wrote an existing file
    of that kind (a bounded look at the file, never a load), and whether replacing one takes --force
    (model files do; files regenerated from the code, like dvc.yaml, do not)."""

    name: str
    ours: Callable[[Path], bool]
    replace_needs_force: bool = False


def json_format_is(fmt: str, max_bytes: int = 64 * 2**20) -> Callable[[Path], bool]:
    """A recogniser: a JSON object whose "format" is `fmt` (files over `max_bytes` are not read)."""
    def ours(path: Path) -> bool:
        try:
            if path.stat().st_size > max_bytes:
                return False
            return json.loads(path.read_text()).get("format") == fmt
        except (ValueError, UnicodeDecodeError, AttributeError, OSError):
            return False
    return ours


def starts_with(line: str) -> Callable[[Path], bool]:
    """A recogniser: a text file whose first bytes are `line`."""
    want = line.encode()

    def ours(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return f.read(len(want)) == want
        except OSError:
            return False
    return ours


def _is_input(real: Path, inputs: Iterable[str | Path | None]) -> str | None:
    """The input that `real` is, or lies inside."""
    return next((str(p) for p in inputs if p is not None and str(p) and _contains(Path(p).resolve(), real)), None)


def check_output_file(path: str | Path, kind: FileKind, *, force: bool = False,
                      inputs: Iterable[str | Path | None] = ()) -> Path:
    """Raise `ArtifactError` (one line naming the path) unless a `kind` file may be written at `path`:
    never a symbolic link or a directory, never one of the run's `inputs` (nor inside an input
    directory), and an existing file only when vitnas wrote it (with `force` when the kind asks)."""
    path = Path(path)
    if not str(path).strip():
        raise ArtifactError("--out: empty path")
    if path.is_symlink() or path.is_dir():
        raise ArtifactError(f"{path}: is a {'symbolic link' if path.is_symlink() else 'directory'}; vitnas writes "
                            f"a {kind.name} file of its own there, so give another path")
    used = _is_input(path.resolve(), inputs)
    if used is not None:
        raise ArtifactError(f"{path}: refusing to write the {kind.name} there: it is an input of this run ({used})"
                            if Path(used).resolve() == path.resolve() else
                            f"{path}: refusing to write the {kind.name} there: it is inside an input of this run "
                            f"({used})")
    if path.exists():
        if not path.is_file():
            raise ArtifactError(f"{path}: exists and is not a regular file; give another path")
        if not kind.ours(path):
            raise ArtifactError(f"{path}: not replaced: it exists and vitnas did not write it (not a {kind.name} "
                                "file); vitnas never replaces a file it did not write, --force or not: choose "
                                "another path, or move the file away yourself")
        if kind.replace_needs_force and not force:
            raise ArtifactError(f"{path}: exists (vitnas wrote it); choose another path, or pass --force to "
                                "replace it")
    return path


def _leftover_tag(directory: Path, name: str | None = None) -> None:
    """Tag `directory` as a leftover-to-be under `name` (default: its own), a temp or old directory
    vitnas made."""
    record = {"format": LEFTOVER_FORMAT, "name": name or directory.name}
    (directory / LEFTOVER_TAG).write_text(json.dumps(record) + "\n")


def _is_our_leftover(entry: Path) -> bool:
    if entry.is_symlink() or not entry.is_dir():
        return False
    tag = entry / LEFTOVER_TAG
    try:
        if tag.is_symlink() or not tag.is_file() or tag.stat().st_size > 4096:
            return False
        d = json.loads(tag.read_text())
        return isinstance(d, dict) and d.get("format") == LEFTOVER_FORMAT and d.get("name") == entry.name
    except (ValueError, UnicodeDecodeError, OSError):
        return False


def remove_leftovers(out: Path) -> None:
    """Remove what an interrupted `atomic_dir` left beside `out` (tagged temp and old directories)
    and nothing else."""
    for kind in ("tmp", "old"):
        for entry in out.parent.glob(f".{out.name}.{kind}-*"):
            if _is_our_leftover(entry):
                shutil.rmtree(entry, ignore_errors=True)


def _open_lock(lock_path: Path) -> tuple[int, bool]:
    """(fd, created): the lock file, created (with vitnas's lock record) when absent. An existing
    file is opened read-only and never written: a user's file of that name is left as it was."""
    flags = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, output_mode())
    except FileExistsError:
        return os.open(lock_path, os.O_RDONLY | flags), False
    os.write(fd, (json.dumps({"format": LOCK_FORMAT, "pid": os.getpid(), "token": uuid.uuid4().hex}) + "\n")
             .encode())
    return fd, True


def _holds_lock_record(fd: int) -> bool:
    """Whether the open lock file holds vitnas's lock record (left by a vitnas process that died)."""
    try:
        d = json.loads(os.pread(fd, 4096, 0).decode())
        return isinstance(d, dict) and d.get("format") == LOCK_FORMAT
    except (ValueError, UnicodeDecodeError, OSError):
        return False


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
    try:
        fd, created = _open_lock(lock_path)
    except OSError as e:
        raise ArtifactError(f"{lock_path}: cannot use it as the lock of {out} ({e.strerror or e}); it is not "
                            "vitnas's: move it away") from None
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
        ours = created or _holds_lock_record(fd)  # identity, not name: a user's `.out.lock` stays
        remove_leftovers(out)
        yield out
    finally:
        if locked and ours:
            try:
                if os.stat(lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    os.unlink(lock_path)
            except OSError:
                pass
        os.close(fd)  # releases the lock


def mark(directory: Path, stage: str) -> None:
    """Write the marker that lets `stage` replace `directory` later."""
    write_json(directory / MARKER, {"format": MARKER_FORMAT, "stage": stage})


@contextmanager
def atomic_dir(out: str | Path, stage: str) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it (marked as `stage`'s) replaces `out`, on
    failure it is deleted. The caller has claimed `out` (`claim_output`). The temp dir, and the old
    output while it is being swapped out, carry the leftover tag, so a kill at any moment leaves
    only what the next run can prove is vitnas's."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it owner-only
    _leftover_tag(tmp)
    try:
        yield tmp
        mark(tmp, stage)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        if out.is_dir() and not out.is_symlink():
            _leftover_tag(out, old.name)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()
    else:
        os.replace(tmp, out)
    (out / LEFTOVER_TAG).unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The contract's metrics.json: a flat mapping of names to numbers."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"metric {k!r} is not a number: {v!r}")
        out[k] = v
    return out
