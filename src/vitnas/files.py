"""Writing one file so that it appears whole or not at all, with the mode every vitnas output has.

A file is written beside its destination under a name vitnas alone makes (`.NAME.tmp-<random>`),
checked if the caller wants (an export's parity check), and only then renamed over the destination:
a killed run leaves the destination as it was. Every output file gets the mode a plain `open()`
would give it (0666 less the umask), also those written through `mkstemp` (which makes 0600).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """The mode of every file vitnas writes (what `open()` gives: 0666 less the umask)."""
    return 0o666 & ~umask()


def temp_beside(path: str | Path) -> Path:
    """A fresh name beside `path` for writing it (keeps the suffix, which some writers read)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:12]}{path.suffix}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block ends without error the temp file (given the
    output mode) replaces `path`, else it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        yield tmp
        os.chmod(tmp, output_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_text(path: str | Path, error: type[Exception], what: str, *, missing: str | None = None,
              not_text: str | None = None) -> str:
    """The UTF-8 text at `path`. A missing, unreadable or non-UTF-8 file, or a directory, raises
    `error` with one line naming it and `what` it should be ("params file"); `missing` and
    `not_text` replace the "not found" and "not a UTF-8 text file" lines."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing or what + ' not found'}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: {not_text or f'not a UTF-8 text file (byte {e.start})'}") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None


def read_json(path: str | Path, error: type[Exception], what: str, *, missing: str | None = None,
              max_bytes: int | None = None) -> Any:
    """The JSON document at `path` (`read_text`'s checks, a size cap, valid JSON), any problem one
    line raising `error`."""
    path = Path(path)
    try:
        too_big = max_bytes is not None and path.stat().st_size > max_bytes
    except OSError:
        too_big = False  # read_text names the problem
    if too_big:
        raise error(f"{path}: a {what} of over {max_bytes / 2**20:g} MiB; refused before reading")
    text = read_text(path, error, what, missing=missing, not_text=f"corrupt {what} (not a text (UTF-8) file)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: corrupt {what} (not valid JSON: {e.msg} at line {e.lineno})") from None
