"""How long a user waits for the CLI before anything happens: `vitnas --help`, `vitnas --version` and a
subcommand's `--help`, each a fresh process, against the reference of importing what every stage needs
(torch + timm), which is what `--help` cost when the CLI imported it eagerly. Target: `--help` < 1.5 s.

    python benchmarks/cli_startup.py [--repeats 5]

Prints a table (median and min over the repeats, ratio to the reference) and writes
benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "cli_startup.json"
CASES = {
    "vitnas --help": [sys.executable, "-m", "vitnas", "--help"],
    "vitnas --version": [sys.executable, "-m", "vitnas", "--version"],
    "vitnas search --help": [sys.executable, "-m", "vitnas", "search", "--help"],
    "reference: import torch, timm": [sys.executable, "-c", "import torch, timm"],
}


def seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per command (default 5)")
    args = ap.parse_args()
    for cmd in CASES.values():  # warm the page cache once, so every repeat reads the same files
        seconds(cmd)
    times = {name: [seconds(cmd) for _ in range(args.repeats)] for name, cmd in CASES.items()}
    ref = statistics.median(times["reference: import torch, timm"])
    print(f"{'command':34} {'median s':>9} {'min s':>7} {'vs reference':>13}")
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"command": name, "median_s": round(med, 3), "min_s": round(min(ts), 3),
                     "ratio_to_reference": round(med / ref, 3)})
        print(f"{name:34} {med:9.2f} {min(ts):7.2f} {med / ref:12.2f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"python": sys.version.split()[0], "repeats": args.repeats, "rows": rows},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
