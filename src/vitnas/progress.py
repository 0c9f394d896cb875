"""One progress style for every long loop: a bar with ETA on a terminal; in a log (DVC, Kubeflow, CI,
`| tee`) plain lines with elapsed time and ETA instead of carriage-return noise; nothing when off.

`lines=False` is for inner loops (the steps of an epoch) whose caller prints its own line per epoch."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any


def clock(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(done: int, total: int, elapsed: float) -> str:
    """`elapsed 3m05s, ETA 1m10s` for `done` of `total` units of work taking `elapsed` seconds so far."""
    if done <= 0 or total <= done:
        return f"elapsed {clock(elapsed)}"
    return f"elapsed {clock(elapsed)}, ETA {clock(elapsed / done * (total - done))}"


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it",
             initial: int = 0, enabled: bool = True, lines: bool = True, every_s: float = 0.0):
    """A tqdm-like object (iterate it, or `update()`, `set_postfix()`, `close()`).

    On a terminal: tqdm's bar. Otherwise, with `lines`: one line per update, at most one per
    `every_s` seconds (and always the last one)."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                    leave=lines)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return _Lines(iterable, total, desc, unit, initial, every_s, enabled and lines)


class _Lines:
    def __init__(self, iterable, total, desc, unit, initial, every_s, show) -> None:
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.start = initial
        self.every_s, self.show = every_s, show
        self.t0 = time.perf_counter()
        self.last = -float("inf")
        self.postfix = ""

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "  ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.show and (now - self.last >= self.every_s or self.n == self.total):
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        timing = eta(self.n - self.start, (self.total or 0) - self.start, now - self.t0)
        print(f"{self.desc}: {done} {self.unit}  {timing}" + (f"  {self.postfix}" if self.postfix else ""),
              flush=True)

    def close(self) -> None:
        pass
