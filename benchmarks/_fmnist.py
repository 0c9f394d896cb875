"""Shared by the Fashion-MNIST claim benchmarks (`fmnist_*.py`): the data, the space, the training
recipes, the statistics and a resumable JSON store.

Data: Fashion-MNIST through vitnas's data stage (`dataset: fashion-mnist`, 28 px; Debian's files by
default: `apt-get install dataset-fashion-mnist`, or `--root` a folder with the four idx files), val
5% of the 60,000 train images (3,000, seeded and stratified), train limited to `--train` images
(`data.max_train_images`, default 20,000), the official 10,000 test images for reporting only: every
choice (search, slimming, ranking) is made on val. Training uses the normalised images held in
memory without augmentation, reshuffled every epoch by a seeded order, so runs are short and
deterministic for a given thread count.

Every finished unit of work (one standalone training, one supernet, one search) is stored at once
in the script's JSON file under a key naming its settings, so an interrupted script resumes where it
stopped, and a finished one re-prints its tables from the file.

Run as `python benchmarks/NAME.py` (this module is then importable as `_fmnist`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import vitnas
from vitnas import Arch, SearchSpace
from vitnas.data import PreparedData
from vitnas.train import batches, evaluate, make_optimizer, make_scheduler

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"  # prepared data and trained supernets (git-ignored)
SPACE = "mnist28"
BATCH = 128
LR = 4e-3  # AdamW peak, cosine to LR / 100, 1 warm-up epoch, weight decay 0.05 (vitnas's recipe pieces)
WEIGHT_DECAY = 0.05


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--root", default=None, help="folder with Fashion-MNIST's idx files (default: Debian's "
                                                 "/usr/share/datasets/fashion-mnist)")
    ap.add_argument("--train", type=int, default=20_000, help="train images used (data.max_train_images)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--results", type=Path, default=None, help="JSON results file (default: benchmarks/results/"
                                                              "<script>.json); reused to resume")


def make_parser(doc: str, *, seeds: int | None = None) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its docstring's first paragraph, the common arguments and,
    with `seeds`, `--seeds` with that default."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(ap)
    if seeds is not None:
        ap.add_argument("--seeds", type=int, default=seeds)
    return ap


def shuffled_batches(t: Tensors, g: torch.Generator, steps: int | None = None) -> list[tuple]:
    """One epoch of (x, y) train batches in the order `g` draws (the first `steps`, default all)."""
    order = torch.randperm(len(t.xs), generator=g)
    n = len(t.xs) // BATCH if steps is None else steps
    return [(t.xs[order[i * BATCH:(i + 1) * BATCH]], t.ys[order[i * BATCH:(i + 1) * BATCH]]) for i in range(n)]


def setup(args: argparse.Namespace, script: str) -> tuple[Tensors, Store]:
    torch.set_num_threads(args.threads)
    store = Store(args.results or RESULTS / f"{script}.json")
    return load_tensors(args.root, args.train), store


# ---- data ---------------------------------------------------------------------------------------
@dataclass
class Tensors:
    data: PreparedData
    xs: torch.Tensor
    ys: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    xt: torch.Tensor
    yt: torch.Tensor

    def describe(self) -> str:
        return (f"Fashion-MNIST 28 px: train {len(self.xs):,} (subset), val {len(self.xv):,} (from train), "
                f"test {len(self.xt):,} (official)")


def data_params(root: str | None, train: int) -> dict:
    return {"tracking": {"enabled": False},
            "data": {"dataset": "fashion-mnist", "root": root, "img_size": 28, "val_fraction": 0.05,
                     "max_train_images": train, "seed": 0}}


def load_tensors(root: str | None, train: int) -> Tensors:
    from vitnas.config import parse_params
    from vitnas.stages import data as data_stage

    out = CACHE / f"fashion-mnist-{train}"
    if not (out / "dataset.json").exists():
        data_stage.run(parse_params(data_params(root, train)), out, track=False)
    data = PreparedData(out)
    parts = [data.eval_tensors(s) for s in ("train", "val", "test")]
    return Tensors(data, *parts[0], *parts[1], *parts[2])


def space() -> SearchSpace:
    return SearchSpace.preset(SPACE)


# ---- results store ------------------------------------------------------------------------------
class Store:
    """A JSON object on disk, rewritten atomically after every `put`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def cached(self, key: str, fn: Callable[[], dict], label: str = "") -> dict:
        hit = self.get(key)
        if hit is not None:
            return hit
        t0 = time.time()
        value = fn()
        log(f"{label or key}: {short(value)} ({time.time() - t0:.0f} s)")
        self.put(key, value)
        return value


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def short(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {x:.4f}" if isinstance(x, float) else f"{k} {x}" for k, x in v.items()
                         if isinstance(x, (int, float)))
    return str(v)[:120]


# ---- training -----------------------------------------------------------------------------------
def seeded(seed: int, *keys) -> int:
    return random.Random(repr((seed, *keys))).getrandbits(62)


def accuracy(forward, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(evaluate(forward, batches(x, y, 1000), torch.device("cpu"))["acc"])


def fit(model: torch.nn.Module, t: Tensors, *, epochs: float, seed: int, lr: float = LR,
        forward: Callable | None = None) -> float:
    """Train `model` on the train subset (AdamW + warm-up + cosine, cross-entropy, batch BATCH) for
    `epochs` (a fraction allowed: equal wall time); returns the seconds it took."""
    forward = forward or model
    steps_per_epoch = len(t.xs) // BATCH
    total = max(1, round(epochs * steps_per_epoch))
    opt = make_optimizer(model, lr, WEIGHT_DECAY)
    sched = make_scheduler(opt, epochs=total, steps_per_epoch=1, warmup_epochs=min(steps_per_epoch, total // 5),
                           min_lr=lr / 100)
    g = torch.Generator().manual_seed(seeded(seed, "order"))
    model.train()
    t0 = time.time()
    step = 0
    while step < total:
        order = torch.randperm(len(t.xs), generator=g)
        for i in range(min(steps_per_epoch, total - step)):
            idx = order[i * BATCH:(i + 1) * BATCH]
            loss = F.cross_entropy(forward(t.xs[idx]), t.ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
    model.eval()
    return time.time() - t0


def standalone(arch: Arch, t: Tensors, *, epochs: float, seed: int, lr: float = LR) -> dict:
    """`arch` trained from scratch: val and test top-1, seconds."""
    torch.manual_seed(seeded(seed, "init", arch.key()))
    model = vitnas.build(arch)
    seconds = fit(model, t, epochs=epochs, seed=seed, lr=lr)
    return {"val": accuracy(model, t.xv, t.yv), "test": accuracy(model, t.xt, t.yt), "seconds": round(seconds, 2),
            "epochs": epochs}


def step_seconds(arch: Arch, t: Tensors, n: int = 8) -> float:
    """Measured seconds of one training step of `arch` alone (for equal-wall-time budgets)."""
    torch.manual_seed(0)
    model = vitnas.build(arch).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x, y = t.xs[:BATCH], t.ys[:BATCH]
    times = []
    for _ in range(n + 2):
        t0 = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def sample_archs(sp: SearchSpace, k: int, seed: int) -> list[Arch]:
    rng = random.Random(repr(("fmnist-archs", seed)))
    found: dict[Arch, None] = {}
    while len(found) < min(k, sp.size()):
        found.setdefault(sp.sample(rng), None)
    return list(found)


# ---- statistics ---------------------------------------------------------------------------------
def kendall(a: Sequence[float], b: Sequence[float]) -> float:
    from vitnas.proxies import kendall_tau

    return float(kendall_tau(list(a), list(b)))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from vitnas.proxies import spearman_rho

    return float(spearman_rho(list(a), list(b)))


def bootstrap_ci(a: Sequence[float], b: Sequence[float], stat, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `stat(a, b)` over resamples of the pairs (the choice of archs)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        v = stat(a[idx].tolist(), b[idx].tolist())
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return math.nan, math.nan
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    v = list(values)
    m = statistics.fmean(v)
    if len(v) < 2:
        return m, 0.0
    return m, _T975.get(len(v) - 1, 1.96) * statistics.stdev(v) / math.sqrt(len(v))


def fmt_ci(values: Sequence[float], digits: int = 4) -> str:
    m, h = mean_ci(values)
    return f"{m:.{digits}f} ± {h:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


# ---- supernets ----------------------------------------------------------------------------------
def train_supernet(net: torch.nn.Module, t: Tensors, *, epochs: float, sampling: str, seed: int = 0,
                   lr: float = LR, kd_warmup_epochs: int = 0) -> dict:
    """Train a supernet (anything with `.space` and `forward(x, arch)`) with vitnas's trainer:
    `uniform` (AutoFormer: one random subnet a step) or `sandwich` (largest on the labels; smallest
    and 2 random subnets distilled from it in place). Returns seconds and the train loss per epoch."""
    from vitnas.supernet.trainer import SupernetTrainer
    from vitnas.train import DistInfo

    steps = len(t.xs) // BATCH
    whole = math.ceil(epochs)
    total = round(epochs * steps)
    trainer = SupernetTrainer(net, dist=DistInfo(), epochs=1, steps_per_epoch=total, lr=lr, min_lr=lr / 100,
                              weight_decay=WEIGHT_DECAY, warmup_epochs=0, mixup=0.0, cutmix=0.0,
                              label_smoothing=0.0, ema_decay=None, amp=False, sampling=sampling, seed=seed,
                              kd_warmup_epochs=kd_warmup_epochs)
    trainer.scheduler = make_scheduler(trainer.optimizer, epochs=total, steps_per_epoch=1,
                                       warmup_epochs=min(steps, total // 5), min_lr=lr / 100)
    g = torch.Generator().manual_seed(seeded(seed, "supernet-order"))
    losses = []
    t0 = time.time()
    for epoch in range(whole):
        loader = shuffled_batches(t, g, min(steps, total - epoch * steps))
        losses.append(round(trainer.train_epoch(loader, epoch, progress=False)["train_loss"], 4))
        log(f"  supernet ({sampling}) epoch {epoch + 1}/{whole}: loss {losses[-1]:.4f} ({time.time() - t0:.0f} s)")
    net.eval()
    return {"seconds": round(time.time() - t0, 1), "train_loss": losses, "epochs": epochs}


def inherited(net: torch.nn.Module, archs: Sequence[Arch], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Top-1 of each arch with the supernet's weights (no retraining)."""
    net.eval()
    return [accuracy(lambda b, a=a: net(b, a), x, y) for a in archs]


def supernet_file(name: str, t: Tensors) -> Path:
    return CACHE / f"supernet-{name}-{len(t.xs)}.pt"


def trained_supernet(name: str, t: Tensors, *, epochs: float, sampling: str, store: Store) -> vitnas.Supernet:
    """vitnas's weight-entangled supernet of the space, trained (or read back from the cache)."""
    path = supernet_file(name, t)
    if path.exists() and store.get(f"supernet/{name}") is not None:
        return vitnas.Supernet.load(path)
    torch.manual_seed(seeded(0, "supernet-init"))
    net = vitnas.Supernet(space())
    info = train_supernet(net, t, epochs=epochs, sampling=sampling)
    net.save(path)
    store.put(f"supernet/{name}", info)
    return net
