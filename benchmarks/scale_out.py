"""Candidates per second of data-parallel search and proxy scoring: 1 process vs N under torchrun.

Runs the real stages as a user would (`vitnas search` / `vitnas proxy`, fresh processes) on the
embedded digits data and the demo space, and reads the stage's own timing from metrics.json
(`seconds` of the search loop, the proxy's scoring time), so process start-up and imports are left
out. Three ways to spend the same cores, side by side:

- `1 process x 1 thread`: the reference;
- `1 process x N threads`: what one process does with every core (torch's intra-op threads);
- `N processes x 1 thread` (torchrun, gloo on CPU / NCCL on GPU): each evaluates its share.

Search: fitness = supernet accuracy with inherited weights (an untrained supernet: the cost is the
same) on the val split (digits at 32 px, 30% of the images as val: 539), `--population` +
`--generations` x `--per-generation` evaluations. Proxy:
`--candidates` candidates scored by DSS. On a GPU machine pass `--device cuda` (N = GPUs). Writes
benchmarks/results/scale_out.json.

    uv run python benchmarks/scale_out.py              # 2-core CPU: about 6 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

RESULTS = Path(__file__).parent / "results" / "scale_out.json"
BIN = Path(sys.executable).parent


def vitnas(args: list[str], *, nproc: int, threads: int, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [str(BIN / "vitnas"), *args] if nproc == 1 else \
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "vitnas", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2, help="processes (and threads) to compare with 1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--per-generation", type=int, default=50)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting (the fastest counts)")
    ap.add_argument("--img-size", type=int, default=32, help="digits upsampled: 64 tokens, enough work per candidate")
    ap.add_argument("--val-fraction", type=float, default=0.3)
    args = ap.parse_args()
    n = args.nproc
    half = args.per_generation // 2
    params = {"tracking": {"enabled": False}, "data": {"img_size": args.img_size, "val_fraction": args.val_fraction},
              "search": {"population": args.population, "parents": min(10, args.population), "mutations": half,
                         "crossovers": args.per_generation - half, "generations": args.generations},
              "proxy": {"num_candidates": args.candidates, "proxies": ["dss"]}}
    settings = [(1, 1), (1, n), (n, 1)]  # (processes, threads each)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitnas-scale-") as tmp:
        work = Path(tmp)
        (work / "p.yaml").write_text(yaml.safe_dump(params))
        vitnas(["data", "--params", "p.yaml", "--out", "data", "--no-track"], nproc=1, threads=n, cwd=work)
        from vitnas.config import load_params
        from vitnas.data import PreparedData
        from vitnas.supernet import Supernet

        data = PreparedData(work / "data")
        space = load_params(work / "p.yaml").search_space(num_classes=data.num_classes, in_chans=data.in_chans)
        torch.manual_seed(0)
        Supernet(space).save(work / "supernet.pt")
        for task in ("search", "proxy"):
            base = None
            for procs, threads in settings:
                best = None
                for r in range(args.repeats):
                    out = f"{task}-{procs}x{threads}-{r}"
                    stage_args = ["--params", "p.yaml", "--data", "data", "--out", out, "--device", args.device,
                                  "--no-track"]
                    if task == "search":
                        stage_args += ["--supernet", "supernet.pt"]
                    t0 = time.perf_counter()
                    vitnas([task, *stage_args], nproc=procs, threads=threads, cwd=work)
                    wall = time.perf_counter() - t0
                    m = json.loads((work / out / "metrics.json").read_text())
                    count = m["evaluations"] if task == "search" else m["num_candidates"]
                    seconds = m["seconds"]
                    rate = count / seconds
                    if best is None or rate > best["candidates_per_s"]:
                        best = {"task": task, "processes": procs, "threads": threads, "candidates": count,
                                "seconds": round(seconds, 2), "wall_s": round(wall, 1),
                                "candidates_per_s": round(rate, 2), "world_size": m.get("world_size")}
                if base is None:
                    base = best["candidates_per_s"]
                best["speedup"] = round(best["candidates_per_s"] / base, 2)
                rows.append(best)
    same = {r["task"]: r for r in rows if (r["processes"], r["threads"]) == (1, n)}
    print(f"device {args.device}, {os.cpu_count()} cores; search: {rows[0]['candidates']} evaluations on the "
          f"val split, proxy: {args.candidates} candidates (DSS)")
    print(f"{'stage':7} {'setting':24} {'candidates':>10} {'stage s':>8} {'cand/s':>8} {'vs 1x1':>7} "
          f"{'vs 1x' + str(n):>7}")
    for r in rows:
        setting = f"{r['processes']} process{'es' if r['processes'] > 1 else ''} x {r['threads']} thread" + \
                  ("s" if r["threads"] > 1 else "")
        vs_threads = r["candidates_per_s"] / same[r["task"]]["candidates_per_s"]
        print(f"{r['task']:7} {setting:24} {r['candidates']:10d} {r['seconds']:8.1f} {r['candidates_per_s']:8.2f} "
              f"{r['speedup']:6.2f}x {vs_threads:6.2f}x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"device": args.device, "cores": os.cpu_count(), "torch": torch.__version__,
                                   "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
