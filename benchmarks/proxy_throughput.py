"""Throughput of DSS scoring: through the supernet, on a standalone model, and the public code's way.

For N candidates sampled from the space (default autoformer-tiny at 224 px, batch 1, CPU), times:

- `fwd+bwd`: one forward + backward (sum of the logits, all-ones input, every parameter's grad) of
  the standalone model `vitnas.build(arch)` (built outside the timing): the unit of the targets;
- `supernet fwd+bwd (grads used)`: the supernet's forward + `autograd.grad` of the block linears
  only: what DSS needs before its metric, so `DSS - this` is the metric's cost;
- `DSS via supernet`: `vitnas.proxies.score("dss", supernet, arch)`, the proxy stage's path. Its
  weight nuclear norms are cached per (parameter, slice) and a long run reuses them, so the cache
  is warmed first with a few other candidates (the steady state of a many-candidate run);
- `DSS standalone`: `score("dss", model)` on a freshly built model (built untimed; nothing cached);
- `build + DSS standalone`: the same plus `vitnas.build(arch)` (what scoring standalone costs);
- `public-code way`: TF-TAS's per-candidate path re-created with this project's layers:
  `copy.deepcopy(supernet)`, re-slice the subnet's weights under no_grad into a fresh model
  (`vitnas.extract`), forward + backward, one nuclear norm (SVD) at a time, `gc.collect()`. It leaves
  out what makes the real code slower still (the relative-position tables), so the speed-up shown
  is a lower bound.

Measurements are interleaved per candidate (drift hits every method alike); per candidate the
median of `--repeats`, overall the median over candidates. Targets: DSS via supernet <= 1.5x
fwd+bwd, and 8000 candidates <= 20 minutes. `--model both` (default) runs the whole table twice: with
the space's model as AutoFormer and TF-TAS run it (avg pooling, relative position) and as a plain
timm ViT (CLS token, no relative position).

    uv run python benchmarks/proxy_throughput.py --candidates 10 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys

import torch
from _timing import timed

import vitnas
from vitnas import proxies
from vitnas.proxies._model import Candidate, scoring, unique_params

RATIO_TARGET = 1.5
MINUTES_TARGET = 20.0
TOTAL = 8000






def fwd_bwd(model, x) -> None:
    for p in model.parameters():
        p.grad = None
    model(x).sum().backward()


def supernet_grads(supernet, arch, x) -> None:
    cand = Candidate(supernet, arch)
    params = unique_params(cand.block_weights())
    with scoring(supernet, params):
        torch.autograd.grad(supernet(x, arch).sum(), params)


def public_code_way(supernet, arch, x) -> float:
    """TF-TAS's path (see the module docstring): deepcopy + no_grad re-slice + fwd/bwd + SVD one by one."""
    net = copy.deepcopy(supernet)
    model = vitnas.extract(net, arch)  # weights re-sliced under no_grad into new tensors
    model.eval()
    model(x).sum().backward()
    total = 0.0
    for blk in model.blocks:
        for lin in (blk.attn.qkv, blk.attn.proj):
            total += float(torch.linalg.matrix_norm(lin.weight.grad, ord="nuc")
                           * torch.linalg.matrix_norm(lin.weight.detach(), ord="nuc"))
        for lin in (blk.mlp.fc1, blk.mlp.fc2):
            total += float((lin.weight.detach() * lin.weight.grad).abs().sum())
    del net, model
    gc.collect()
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--space", default="autoformer-tiny", choices=vitnas.SearchSpace.presets())
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--candidates", type=int, default=10, help="number of sampled candidates")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method and candidate (median)")
    ap.add_argument("--warm-cache", type=int, default=8,
                    help="other candidates scored first through the supernet (weight-norm cache, steady state)")
    ap.add_argument("--no-public", action="store_true", help="skip the (slow) public-code path")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0, help="sampling and weights seed")
    ap.add_argument("--model", default="both", choices=["autoformer", "timm", "both"],
                    help="autoformer: the preset's model (avg pooling, relative position); timm: CLS token, no "
                         "relative position, eps 1e-6")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    results = {}
    for model in (["autoformer", "timm"] if args.model == "both" else [args.model]):
        torch.manual_seed(args.seed)
        space = vitnas.SearchSpace.preset(args.space, img_size=args.img_size)
        if model == "timm":
            space = vitnas.SearchSpace.preset(args.space, img_size=args.img_size, global_pool="token", rel_pos=False,
                                              norm_eps=1e-6)
        print(f"\n=== model: {model}")
        results[model] = measure(space, device, args)
    print()
    ok = True
    for model, (ratio, minutes, best) in results.items():
        met = ratio <= RATIO_TARGET and minutes <= MINUTES_TARGET
        ok &= met
        print(f"{model:<10} DSS via supernet: {ratio:.2f}x one fwd+bwd (target <= {RATIO_TARGET}), {minutes:.1f} min "
              f"for {TOTAL} candidates (target <= {MINUTES_TARGET:.0f}): {'met' if met else 'MISSED'} "
              f"(best-of: {best:.2f}x)")
    return 1 if args.check and not ok else 0


def measure(space, device, args) -> tuple[float, float, float]:
    """The table for one space: (DSS / fwd+bwd, minutes for 8000 candidates, best-of ratio)."""
    supernet = vitnas.Supernet(space).to(device).eval()
    archs = [space.sample(args.seed * 100003 + i) for i in range(args.candidates)]
    x = torch.ones(1, space.in_chans, space.img_size, space.img_size, device=device)
    print(f"{space}\ndevice {device}, threads {torch.get_num_threads()}, batch 1, {args.candidates} candidates, "
          f"repeats {args.repeats}, torch {torch.__version__}", flush=True)

    for i in range(args.warm_cache):  # steady state of a long run: weight norms of common slices cached
        proxies.score("dss", supernet, space.sample(10**6 + i))

    methods = ("fwd+bwd (standalone)", "supernet fwd+bwd (grads used)", "DSS via supernet", "DSS standalone",
               "build + DSS standalone", "public-code way")
    med_rows: dict[str, list[float]] = {k: [] for k in methods}  # per candidate: median of the repeats
    min_rows: dict[str, list[float]] = {k: [] for k in methods}  # per candidate: best of the repeats
    for n, arch in enumerate(archs):
        model = vitnas.build(arch).to(device).eval()
        fwd_bwd(model, x)  # warmup (allocator, kernels)
        proxies.score("dss", supernet, arch)
        got: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(args.repeats):
            got["fwd+bwd (standalone)"].append(timed(lambda m=model: fwd_bwd(m, x), device))
            got["supernet fwd+bwd (grads used)"].append(timed(lambda a=arch: supernet_grads(supernet, a, x), device))
            got["DSS via supernet"].append(timed(lambda a=arch: proxies.score("dss", supernet, a), device))
            fresh = vitnas.build(arch).to(device)  # new weights: nothing cached for them
            got["DSS standalone"].append(timed(lambda m=fresh: proxies.score("dss", m), device))
            got["build + DSS standalone"].append(
                timed(lambda a=arch: proxies.score("dss", vitnas.build(a).to(device)), device))
        if not args.no_public:
            got["public-code way"].append(timed(lambda a=arch: public_code_way(supernet, a, x), device))
        for k, v in got.items():
            if v:
                med_rows[k].append(statistics.median(v))
                min_rows[k].append(min(v))
        med = {k: statistics.median(v) * 1e3 for k, v in got.items() if v}
        print(f"  cand {n}: {arch}  fwd+bwd {med['fwd+bwd (standalone)']:.0f} ms, "
              f"DSS {med['DSS via supernet']:.0f} ms" +
              (f", public {med['public-code way']:.0f} ms" if "public-code way" in med else ""), flush=True)
        del model

    def overall(rows: dict[str, list[float]]) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in rows.items() if v}

    med_all, min_all = overall(med_rows), overall(min_rows)
    base, base_min = med_all["fwd+bwd (standalone)"], min_all["fwd+bwd (standalone)"]
    public = med_all.get("public-code way")
    header = (f"| {'method':<30} | {'ms / cand':>9} | {'x fwd+bwd':>9} | {'8000 cands (min)':>16} "
              f"| {'speed-up vs public':>18} | {'best-of ms':>10} | {'best-of x':>9} |")
    print("\n" + header + "\n|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, s in med_all.items():
        speed = f"{public / s:.1f}x" if public else "-"
        print(f"| {name:<30} | {s * 1e3:9.1f} | {s / base:9.2f} | {s * TOTAL / 60:16.1f} | {speed:>18} "
              f"| {min_all[name] * 1e3:10.1f} | {min_all[name] / base_min:9.2f} |")
    print("(ms / cand: median over candidates of each candidate's median of the repeats; best-of: the same "
          "with each candidate's fastest repeat, less sensitive to other load on the machine; the public-code "
          "way runs once per candidate)")
    dss = med_all["DSS via supernet"]
    ratio, minutes = dss / base, dss * TOTAL / 60
    return ratio, minutes, min_all["DSS via supernet"] / base_min


if __name__ == "__main__":
    sys.exit(main())
