"""CPU speed-up of a physically slimmed ViT at a FLOPs budget, against its FLOPs ratio.

Default: a DeiT-tiny-shaped arch (`Arch.published("deit-tiny")`: embed 192, 12 layers, 3 heads
of 64, MLP 768, 224 px, patch 16, 1000 classes) with random weights and random mask scores
(per-layer x per-head x per-entry random factors, so the global ranking gives uneven layers),
cut to `--target` of its FLOPs (default 0.6, a 40% cut) by the slim budget solver with head dims
and MLP widths rounded to `--round-to`, then physically pruned. Latency is measured for the
unpruned and the pruned model at batch 1 and batch 32: median of `--repeats` timed forward
passes each (after warmup, the two models alternating so clock drift hits both equally).

Criterion: speedup = t_before / t_after, flops_ratio = flops_before / flops_after;
pass when speedup >= 0.8 * flops_ratio.

With --data, --supernet and --arch (a searched arch.json, or a model directory instead of
--supernet/--arch pair) it also runs the slim stage (`vitnas.stages.slim.run`, params from
--params) on that data and reports val accuracy before/after with the same latency table for
that (small) model.

    uv run python benchmarks/slim_speedup.py
    uv run python benchmarks/slim_speedup.py --token-keep 0.7    # tokens removed too
    uv run python benchmarks/slim_speedup.py --data artifacts/data --supernet artifacts/supernet/supernet.pt \\
        --arch artifacts/search/best_arch.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitnas import Arch, build, count_flops, count_params
from vitnas.slim import MaskedViT, prune, solve_budget

FACTOR = 0.8  # speedup must reach this fraction of the FLOPs ratio


def _time(model: torch.nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


@torch.inference_mode()
def latency(before: torch.nn.Module, after: torch.nn.Module, x: torch.Tensor, repeats: int,
            warmup: int = 2) -> tuple[float, float]:
    """Median seconds of one forward pass of each model, measured alternately."""
    before.eval()
    after.eval()
    for _ in range(warmup):
        before(x)
        after(x)
    tb, ta = [], []
    for r in range(repeats):
        if r % 2:
            ta.append(_time(after, x))
            tb.append(_time(before, x))
        else:
            tb.append(_time(before, x))
            ta.append(_time(after, x))
    return statistics.median(tb), statistics.median(ta)


def random_scores(masked: MaskedViT, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in masked.attn_masks:
            layer = 0.3 + 0.7 * torch.rand((), generator=g)
            head = 0.3 + 0.7 * torch.rand(m.shape[0], 1, generator=g)
            m.copy_(layer * head * torch.rand(m.shape, generator=g))
        for m in masked.mlp_masks:
            layer = 0.3 + 0.7 * torch.rand((), generator=g)
            m.copy_(layer * torch.rand(m.shape, generator=g))
        for s in masked.token_scores:  # tokens: scores falling with depth, so later layers keep fewer
            s.copy_(3.0 * torch.rand(s.shape, generator=g) + 1.0 - 0.15 * len(masked.token_scores))


def table(rows: list[dict], flops_ratio: float) -> bool:
    need = FACTOR * flops_ratio
    print(f"{'model':<14} {'batch':>5} {'before ms':>10} {'after ms':>10} {'speedup':>8} {'flops ratio':>11} "
          f"{'need':>6} {'pass':>5}")
    ok = True
    for r in rows:
        passed = r["speedup"] >= need
        ok &= passed
        print(f"{r['model']:<14} {r['batch']:>5} {1e3 * r['before']:>10.2f} {1e3 * r['after']:>10.2f} "
              f"{r['speedup']:>8.2f} {flops_ratio:>11.2f} {need:>6.2f} {'yes' if passed else 'NO':>5}")
    return ok


def describe(name: str, before: Arch, after: Arch) -> None:
    fb, fa, pb, pa = count_flops(before), count_flops(after), count_params(before), count_params(after)
    print(f"{name}: FLOPs {fb / 1e6:.2f}M -> {fa / 1e6:.2f}M ({fa / fb:.3f}), params {pb / 1e6:.3f}M -> "
          f"{pa / 1e6:.3f}M ({pa / pb:.3f})")
    print(f"  before: heads {list(before.num_heads)} head_dim {list(before.head_dim)} mlp {list(before.mlp_hidden)}")
    print(f"  after:  heads {list(after.num_heads)} head_dim {list(after.head_dim)} mlp {list(after.mlp_hidden)}")
    if after.keep_tokens is not None:
        print(f"  tokens: {before.num_patches} patches in -> per layer {list(after.keep_tokens)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--arch-name", default="deit-tiny", help="published arch for the synthetic case")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--target", type=float, default=0.6, help="FLOPs kept (0.6 = a 40%% cut)")
    ap.add_argument("--round-to", type=int, default=8, help="head dims and MLP widths rounded up to this")
    ap.add_argument("--token-keep", type=float, default=None,
                    help="also remove tokens: fraction of (layer, patch) token slots kept (slim.token_keep_ratio)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=15, help="timed passes per model and batch (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: least disturbed by other load on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-synthetic", action="store_true", help="only the --data case")
    ap.add_argument("--data", type=Path, help="prepared data dir (vitnas data) for the trained case")
    ap.add_argument("--supernet", type=Path, help="supernet.pt giving the weights of --arch")
    ap.add_argument("--arch", type=Path, help="searched arch.json, or a model dir (arch.json + model.safetensors)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="params for the slim stage")
    ap.add_argument("--out", type=Path, help="where the slim stage writes (default: a temp dir)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU threads, target FLOPs ratio {args.target}, "
          f"round_to {args.round_to}; pass: speedup >= {FACTOR} x flops_before/flops_after")
    ok = True

    if not args.skip_synthetic:
        torch.manual_seed(args.seed)
        arch = Arch.published(args.arch_name, img_size=args.img_size)
        model = build(arch).eval()
        masked = MaskedViT(model, arch, tokens=args.token_keep is not None)
        random_scores(masked, args.seed)
        t0 = time.perf_counter()
        plan = solve_budget(arch, masked.scores(), kind="flops", ratio=args.target, round_to=args.round_to,
                            token_keep=args.token_keep)
        solve_s = time.perf_counter() - t0
        masked.apply_plan(plan)
        pruned = prune(masked, plan).eval()
        describe(f"{args.arch_name} @ {args.img_size}px, random weights + random mask scores "
                 f"(budget solved in {solve_s:.2f}s)", arch, plan.arch)
        with torch.inference_mode():
            x = torch.randn(2, arch.in_chans, arch.img_size, arch.img_size)
            print(f"  pruned vs masked (binarised) max |diff|: {(pruned(x) - masked.eval()(x)).abs().max().item():.2e}")
        flops_ratio = count_flops(arch) / count_flops(plan.arch)
        rows = []
        for b in args.batches:
            x = torch.randn(b, arch.in_chans, arch.img_size, arch.img_size)
            tb, ta = latency(model, pruned, x, args.repeats)
            rows.append({"model": args.arch_name, "batch": b, "before": tb, "after": ta, "speedup": tb / ta})
        ok &= table(rows, flops_ratio)

    if args.data is not None:
        from vitnas.config import load_params
        from vitnas.slim import load_model
        from vitnas.stages import slim as stage
        from vitnas.stages._inputs import load_input_model

        if args.arch is None:
            ap.error("--data needs --arch (and --supernet unless --arch is a model directory)")
        params = load_params(args.params)
        params = params.model_copy(update={"slim": params.slim.model_copy(
            update={"target_flops_ratio": args.target, "target_params_ratio": None, "round_to": args.round_to,
                    "token_keep_ratio": args.token_keep})})
        out = args.out or Path(tempfile.mkdtemp(prefix="slim-bench-")) / "slim"
        m = stage.run(params, args.data, args.supernet, args.arch, out, track=False, progress=False)
        before, arch = load_input_model(args.arch, args.supernet, torch.device("cpu"))[:2]
        after, arch_after = load_model(out)
        describe(f"trained ({args.data}), slimmed {params.slim.epochs} epochs -> {out}", arch, arch_after)
        print(f"  val accuracy: before {m['val_acc_before']:.4f}  after {m['val_acc_after']:.4f} "
              f"(soft masks {m['val_acc_masked']:.4f}); no fine-tune")
        rows = []
        for b in args.batches:
            x = torch.randn(b, arch.in_chans, arch.img_size, arch.img_size)
            tb, ta = latency(before, after, x, args.repeats * 4)
            rows.append({"model": "trained", "batch": b, "before": tb, "after": ta, "speedup": tb / ta})
        table(rows, m["flops_before"] / m["flops_after"])
        print("  (a model this small is dominated by per-op overhead, so its speed-up is not gated)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
