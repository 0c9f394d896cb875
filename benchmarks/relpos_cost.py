"""What AutoFormer's relative position costs in vitnas, side by side in one run.

For N archs of the autoformer-tiny space (AutoFormer-T first, then seeded samples), times one training
step (forward + cross-entropy backward, batch 8, 224 px) of five models on the same batch, interleaved
(rotated order every repeat, so drift in clock speed hits all alike):

- `timm`: `vitnas.build(arch)` without relative position: a plain timm VisionTransformer (timm's own
  Attention and Block), the reference;
- `static`: `vitnas.build(arch)` with relative position;
- `supernet`: the arch run inside `vitnas.Supernet` of the space (relative position on);
- `static-norel` / `gather`: the static model with relative position computed as AutoFormer's code
  does (an N x N x head_dim gather of the tables, back-propagated through that gather), re-written
  here from its formula, to show where AutoFormer's 3.99x came from.

Per arch: median ms of each and the medians of the back-to-back ratios; overall: medians of the
per-arch ratios against the targets (issue 15): supernet/static <= 1.3, supernet/timm <= 1.5,
static/timm <= 1.25.

    uv run python benchmarks/relpos_cost.py --archs 5 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import train_step

import vitnas
from vitnas.models.build import RelPosAttention

TARGETS = {"supernet/static": 1.3, "supernet/timm": 1.5, "static/timm": 1.25}


class GatherAttention(RelPosAttention):
    """AutoFormer's formulation: r[i, j] = T_v[...] + T_h[...] gathered to N x N x d, then two einsums."""

    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        g, c = self.grid, self.rel_pos_k.clip
        t = torch.arange(N - 1, device=x.device)
        dv = F.pad(((t[None] // g) - (t[:, None] // g)).clamp(-c, c) + c + 1, (1, 0, 1, 0))
        dh = F.pad(((t[None] % g) - (t[:, None] % g)).clamp(-c, c) + c + 1, (1, 0, 1, 0))
        r_k = self.rel_pos_k.table_v[dv] + self.rel_pos_k.table_h[dh]
        r_v = self.rel_pos_v.table_v[dv] + self.rel_pos_v.table_h[dh]
        attn = ((q @ k.transpose(-2, -1)) + torch.einsum("bhid,ijd->bhij", q, r_k)) * self.scale
        attn = attn.softmax(-1)
        out = attn @ v + torch.einsum("bhij,ijd->bhid", attn, r_v)
        return self.proj(out.transpose(1, 2).reshape(B, N, self.attn_dim))






def _time(names, models, params, x, y, device, arch, warmup, repeats) -> dict[str, list[float]]:
    """Interleaved steps of every model (the order rotates each repeat); the supernet runs `arch`."""
    def run(n: str) -> float:
        return train_step(models[n], params[n], x, y, device, arch if n == "supernet" else None)

    for _ in range(warmup):
        for n in names:
            run(n)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            times[n].append(run(n))
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--archs", type=int, default=5, help="AutoFormer-T plus this many - 1 sampled archs")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per model and arch (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument("--check", action="store_true", help="exit 1 when a median ratio misses its target")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    space = vitnas.SearchSpace.preset("autoformer-tiny", img_size=args.img_size)
    supernet = vitnas.Supernet(space).to(device).train()
    archs = [vitnas.Arch.published("autoformer-t", img_size=args.img_size)]
    archs += [space.sample(args.seed * 100003 + i) for i in range(args.archs - 1)]
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, space.num_classes, (args.batch,), device=device)
    print(f"{space}\ndevice {device}, threads {torch.get_num_threads()}, batch {args.batch}, repeats {args.repeats}, "
          f"torch {torch.__version__}")
    names = ["timm", "static", "supernet", "gather"]
    header = f"{'arch':<34}" + "".join(f"{n + ' ms':>12}" for n in names) + "".join(
        f"{k:>17}" for k in (*TARGETS, "gather/timm"))
    print(header + "\n" + "-" * len(header))
    rows, ratios = [], {k: [] for k in (*TARGETS, "gather/timm")}
    for i, arch in enumerate(archs):
        models = {"timm": vitnas.build(arch.replace(rel_pos=False)), "static": vitnas.build(arch)}
        gather = vitnas.build(arch)
        for blk in gather.blocks:
            blk.attn.__class__ = GatherAttention
        models["gather"] = gather
        models = {k: m.to(device).train() for k, m in models.items()} | {"supernet": supernet}
        params = {k: list(m.parameters()) for k, m in models.items()}
        times = _time(names, models, params, x, y, device, arch, args.warmup, args.repeats)
        ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}

        def pair(a, b, times=times):
            return statistics.median(p / q for p, q in zip(times[a], times[b], strict=True))

        row = {"supernet/static": pair("supernet", "static"), "supernet/timm": pair("supernet", "timm"),
               "static/timm": pair("static", "timm"), "gather/timm": pair("gather", "timm")}
        for k, v in row.items():
            ratios[k].append(v)
        label = "AutoFormer-T" if i == 0 else f"sample e{arch.embed_dim} d{arch.depth}"
        rows.append({"arch": arch.to_dict(), "label": label, "ms": ms, "ratios": row})
        print(f"{label:<34}" + "".join(f"{ms[n]:>12.1f}" for n in names) + "".join(f"{v:>17.3f}" for v in row.values()),
              flush=True)
    print()
    ok = True
    summary = {}
    for k, v in ratios.items():
        med = statistics.median(v)
        summary[k] = med
        target = TARGETS.get(k)
        verdict = "" if target is None else f" (target <= {target}): {'PASS' if med <= target else 'FAIL'}"
        ok &= target is None or med <= target
        print(f"median {k}: {med:.3f}{verdict}")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                         "batch": args.batch, "img_size": args.img_size, "repeats": args.repeats,
                                         "torch": torch.__version__, "rows": rows, "median": summary}, indent=1))
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
