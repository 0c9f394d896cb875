"""The supernet recipe on Fashion-MNIST, and AutoFormer's weight entanglement vs classical weight sharing.

Four supernets of the `mnist28` space on the same data (see `_fmnist.py`), with vitnas's trainer
and the same AdamW / warm-up / cosine recipe:

- uniform: AutoFormer's single-path training, one random subnet a step, weight-entangled, `--epochs`;
- uniform, 3x: the same for 3 x `--epochs`;
- sandwich: the largest subnet on the labels, the smallest and 2 random ones distilled from it in
  place (BigNAS / NASViT), weight-entangled, for as many epochs as take the uniform one's time
  (estimated from measured step times);
- separate: classical one-shot weight sharing, AutoFormer's baseline: every (layer, embed, heads,
  MLP ratio) choice has its own block and every embed width its own stem and head; uniform
  sampling, `--epochs`.

Then the smallest, the largest and 10 fixed random subnets are evaluated with inherited weights (val
and test top-1); the smallest, the largest and 3 of the random ones are also trained alone from
scratch for `--epochs` (equal epochs) and for the uniform supernet's wall time (equal time).
Prints markdown tables; raw results in benchmarks/results/fmnist_supernet.json (resumable).

    uv run python benchmarks/fmnist_supernet.py            # about 25 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _fmnist import (
    BATCH,
    Store,
    Tensors,
    add_common_args,
    inherited,
    log,
    seeded,
    setup,
    space,
    standalone,
    step_seconds,
    train_supernet,
    trained_supernet,
)
from torch import nn

import vitnas
from vitnas import Arch, SearchSpace
from vitnas.supernet.trainer import validation_archs

VARIANTS = ("uniform", "uniform-3x", "sandwich", "separate")
ALONE = ("smallest", "largest", "random0", "random1", "random2")  # also trained from scratch


class SeparateWeights(nn.Module):
    """Classical weight sharing: one block per (layer, embed, heads, MLP width) choice, one stem
    (patch embedding, CLS, position embedding) and head per embed width; a subnet is a path
    through them. Each piece is `vitnas.build`'s own, so the subnets equal the entangled ones in
    shape and initialisation scheme."""

    def __init__(self, sp: SearchSpace) -> None:
        super().__init__()
        self.space = sp
        self.stems = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        common = dict(patch_size=sp.patch_size, img_size=sp.img_size, in_chans=sp.in_chans,
                      num_classes=sp.num_classes, head_dim=sp.head_dim)
        for e in sp.embed_dim:
            stem = vitnas.build(Arch.create(embed_dim=e, depth=1, num_heads=1, mlp_ratio=1.0, **common))
            stem.blocks = nn.Sequential()
            self.stems[str(e)] = stem
            for layer in range(max(sp.depth)):
                for h in sp.num_heads:
                    for r in sp.mlp_ratio:
                        a = Arch.create(embed_dim=e, depth=1, num_heads=h, mlp_ratio=r, **common)
                        self.blocks[self._key(layer, e, h, a.mlp_hidden[0])] = vitnas.build(a).blocks[0]

    @staticmethod
    def _key(layer: int, embed: int, heads: int, hidden: int) -> str:
        return f"{layer}_{embed}_{heads}_{hidden}"

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        stem = self.stems[str(arch.embed_dim)]
        x = stem.norm_pre(stem.patch_drop(stem._pos_embed(stem.patch_embed(x))))
        for i in range(arch.depth):
            x = self.blocks[self._key(i, arch.embed_dim, arch.num_heads[i], arch.mlp_hidden[i])](x)
        return stem.forward_head(stem.norm(x))


def sandwich_epochs(sp: SearchSpace, t: Tensors, epochs: int) -> float:
    """Epochs of sandwich training that take about as long as `epochs` of uniform training: a
    sandwich step costs largest + smallest + 2 average subnets, a uniform step one average."""
    avg = statistics.fmean(step_seconds(a, t) for a in validation_archs(sp, 12, seed=1).values())
    ratio = (step_seconds(sp.largest(), t) + step_seconds(sp.smallest(), t) + 2 * avg) / avg
    return round(epochs / ratio, 2)


def evaluate_all(name: str, net: nn.Module, archs: dict[str, Arch], t: Tensors, store: Store) -> dict:
    def run() -> dict:
        val = inherited(net, list(archs.values()), t.xv, t.yv)
        test = inherited(net, list(archs.values()), t.xt, t.yt)
        return {k: {"val": v, "test": s} for k, v, s in zip(archs, val, test, strict=True)}
    return store.cached(f"eval/{name}", run, f"{name}: inherited accuracies")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the uniform and separate supernets, and of "
                                                          "the equal-epoch standalone runs")
    args = ap.parse_args(argv)
    t, store = setup(args, "fmnist_supernet")
    sp = space()
    archs = validation_archs(sp, 10, seed=0)
    log(t.describe())

    supernets = {}
    supernets["uniform"] = trained_supernet("uniform", t, epochs=args.epochs, sampling="uniform", store=store)
    sw = store.get("sandwich_epochs") or sandwich_epochs(sp, t, args.epochs)
    store.put("sandwich_epochs", sw)
    supernets["sandwich"] = trained_supernet("sandwich", t, epochs=sw, sampling="sandwich", store=store)
    supernets["uniform-3x"] = trained_supernet("uniform-3x", t, epochs=3 * args.epochs, sampling="uniform",
                                               store=store)
    evals = {name: evaluate_all(name, net, archs, t, store) for name, net in supernets.items()}
    if store.get("eval/separate") is None:
        torch.manual_seed(seeded(0, "separate-init"))
        sep = SeparateWeights(sp)
        store.put("supernet/separate", train_supernet(sep, t, epochs=args.epochs, sampling="uniform")
                  | {"parameters": sum(p.numel() for p in sep.parameters())})
        evals["separate"] = evaluate_all("separate", sep, archs, t, store)
    evals["separate"] = store.get("eval/separate")
    budget = store.get("supernet/uniform")["seconds"]
    steps = len(t.xs) // BATCH
    alone = {}
    for name in ALONE:
        arch = archs[name]
        same_epochs = store.cached(f"alone/{name}/epochs", lambda a=arch: standalone(a, t, epochs=args.epochs, seed=0),
                                   f"{name} alone, {args.epochs} epochs")
        eq = budget / (step_seconds(arch, t) * steps)
        same_time = store.cached(f"alone/{name}/time", lambda a=arch, e=eq: standalone(a, t, epochs=round(e, 2),
                                                                                       seed=0),
                                 f"{name} alone, the uniform supernet's {budget:.0f} s")
        alone[name] = {"epochs": same_epochs, "time": same_time}

    # ---- tables ----
    info = {k: store.get(f"supernet/{k}") for k in VARIANTS}
    print(f"## Supernet recipes on {t.describe()}, space {sp.name} ({sp.size():,} archs)\n")
    print("| supernet | epochs | seconds | smallest val | largest val | mean of 10 random val | "
          "mean of 12, test |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in VARIANTS:
        e = evals[name]
        rand = [e[k]["val"] for k in archs if k.startswith("random")]
        print(f"| {name} | {info[name]['epochs']:g} | {info[name]['seconds']:.0f} | {e['smallest']['val']:.4f} | "
              f"{e['largest']['val']:.4f} | {statistics.fmean(rand):.4f} | "
              f"{statistics.fmean(v['test'] for v in e.values()):.4f} |")
    print(f"\n### Inherited vs trained alone (val top-1); alone: {args.epochs} epochs, and the uniform supernet's "
          f"{budget:.0f} s\n")
    print(f"| subnet | params | {' | '.join(VARIANTS)} | alone, equal epochs | alone, equal time (epochs) |")
    print("|---|---:|" + "---:|" * len(VARIANTS) + "---:|---:|")
    for name in ALONE:
        a = alone[name]
        inh = " | ".join(f"{evals[v][name]['val']:.4f}" for v in VARIANTS)
        print(f"| {name} | {vitnas.count_params(archs[name]):,} | {inh} | "
              f"{a['epochs']['val']:.4f} | {a['time']['val']:.4f} ({a['time']['epochs']:g}) |")
    store.put("archs", {k: a.to_dict() for k, a in archs.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
