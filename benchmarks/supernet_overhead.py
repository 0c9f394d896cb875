"""Overhead of running an arch inside the weight-entangled supernet vs its standalone model.

For N sampled archs, times one training step (forward + cross-entropy backward) of
`supernet(x, arch)` and of `vitnas.build(arch)` on the same batch, interleaved (the order
alternates every repeat, so drift in clock speed hits both), after a warmup. Per arch: median
ms of each and the median of the back-to-back ratios supernet / static; overall: the median of
the per-arch ratios against the target (<= 1.10).

    uv run python benchmarks/supernet_overhead.py --archs 10 --batch 8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _timing import train_step

import vitnas

TARGET = 1.10






def _summary(arch: vitnas.Arch) -> str:
    heads = statistics.mean(arch.num_heads)
    ratio = statistics.mean(arch.mlp_ratio)
    return f"e{arch.embed_dim} d{arch.depth} h{heads:.2f} r{ratio:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--space", default="autoformer-tiny", choices=vitnas.SearchSpace.presets())
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--archs", type=int, default=10, help="number of sampled archs")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per model and arch (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per model and arch")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0, help="arch sampling and weights seed")
    ap.add_argument("--check", action="store_true", help="exit 1 when the median ratio misses the target")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    space = vitnas.SearchSpace.preset(args.space, img_size=args.img_size)
    supernet = vitnas.Supernet(space).to(device).train()
    super_params = list(supernet.parameters())
    x = torch.randn(args.batch, space.in_chans, space.img_size, space.img_size, device=device)
    y = torch.randint(0, space.num_classes, (args.batch,), device=device)
    print(f"{space}\ndevice {device}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"repeats {args.repeats}, warmup {args.warmup}, torch {torch.__version__}")

    header = f"{'arch':<28} {'params':>7} {'static ms':>10} {'supernet ms':>12} {'ratio':>6}"
    print(header + "\n" + "-" * len(header))
    ratios = []
    for i in range(args.archs):
        arch = space.sample(args.seed * 100003 + i)
        static = vitnas.build(arch).to(device).train()
        static_params = list(static.parameters())
        for _ in range(args.warmup):
            train_step(static, static_params, x, y, device)
            train_step(supernet, super_params, x, y, device, arch)
        ts, tn = [], []
        for r in range(args.repeats):
            if r % 2 == 0:
                ts.append(train_step(static, static_params, x, y, device))
                tn.append(train_step(supernet, super_params, x, y, device, arch))
            else:
                tn.append(train_step(supernet, super_params, x, y, device, arch))
                ts.append(train_step(static, static_params, x, y, device))
        s_ms, n_ms = 1e3 * statistics.median(ts), 1e3 * statistics.median(tn)
        # Ratio of back-to-back pairs, then the median: load from other processes changes slowly,
        # so it mostly cancels within a pair while it can skew two separate medians.
        ratio = statistics.median(n / s for n, s in zip(tn, ts, strict=True))
        ratios.append(ratio)
        params = vitnas.count_params(arch) / 1e6
        print(f"{_summary(arch):<28} {params:>6.2f}M {s_ms:>10.1f} {n_ms:>12.1f} {ratio:>6.3f}", flush=True)
        del static, static_params

    med = statistics.median(ratios)
    ok = med <= TARGET
    print(f"\nmedian ratio supernet/static: {med:.3f} (target <= {TARGET:.2f}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
