"""Input-pipeline throughput: an image folder of JPEGs vs tar shards of the original bytes vs shards
pre-resized (`data.store_size`), at 32 and 224 px, side by side in one run; then the same shards on
S3 (moto's server on loopback standing in for MinIO/S3), with the requests each epoch makes, read
through the cache, by one ranged GET per image, or streamed (`data.shuffle_buffer`); and the
model's own images/s, so the table says how many DataLoader workers keep one training step fed.

The images: `--images` synthetic photos (smooth colour fields, shapes and sensor noise, `--size`
px, JPEG quality 90: about ImageNet's bytes per pixel), written as `train/CLASS/*.jpg`. Loader
images/s = one process (one DataLoader worker's worth) running the training transform (timm
RandomResizedCrop, flip, to tensor, normalise) and collation, batch 64, over the whole train split.
Model images/s = forward + backward of one training step: the `demo` space's largest arch at 32 px,
AutoFormer-T at 224 px (`--device`).

    uv run python benchmarks/loader_throughput.py                  # about 5 min on 2 CPU cores
    uv run python benchmarks/loader_throughput.py --device cuda    # on a GPU machine
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _timing import train_step
from PIL import Image, ImageDraw

from vitnas import Arch, build
from vitnas.config import parse_params
from vitnas.data import PreparedData
from vitnas.space import SearchSpace
from vitnas.stages import data as data_stage
from vitnas.train.loop import epoch_loader, reseed

RESULTS = Path(__file__).resolve().parent / "results"
S3_ROWS = ("epoch 1 (fetch)", "epoch 2 (cached)", "no cache, random access (a ranged GET per image)",
           "no cache, streamed (data.shuffle_buffer: 500)")


def photo(rng: np.random.Generator, w: int, h: int) -> bytes:
    """A JPEG with photo-like statistics: a colour gradient, a few shapes, mild noise."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * rng.uniform(0.2, 1) + y * rng.uniform(0.2, 1)) % 256 for _ in range(3)], -1)
    im = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        draw.ellipse([x0, y0, x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    a = np.asarray(im).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_folder(root: Path, n: int, size: int, classes: int = 10) -> int:
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        d = root / "train" / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        data = photo(rng, size, size * 3 // 4)
        (d / f"{i:06d}.jpg").write_bytes(data)
        total += len(data)
    return total


def prepare(root: str, out: Path, img_size: int, shards: str | None, store_size: int | None) -> PreparedData:
    p = parse_params({"data": {"dataset": "imagefolder", "root": root, "img_size": img_size, "val_fraction": 0.05,
                               "test_fraction": 0.05, "shards": shards, "store_size": store_size,
                               "augment": {"scale": [0.35, 1.0]}},
                      "tracking": {"enabled": False}, "transfer": {"targets": []},
                      "space": {"preset": "demo" if img_size == 32 else "autoformer-tiny", "patch_size": 4
                                if img_size == 32 else 16}})
    data_stage.run(p, out, track=False)
    return PreparedData(out)


def loader_rate(data: PreparedData, img_size: int, epochs: int = 1, shuffle_buffer: int | None = None) -> list[float]:
    """Images/s of each epoch of the training input pipeline in this process."""
    ds = data.dataset("train", train=True, img_size=img_size, shuffle_buffer=shuffle_buffer)
    rates = []
    for epoch in range(epochs):
        reseed(0, epoch)
        t0 = time.perf_counter()
        n = sum(len(x) for x, _ in epoch_loader(ds, batch_size=64, seed=0, epoch=epoch))
        rates.append(n / (time.perf_counter() - t0))
    return rates


def model_rate(arch: Arch, device: torch.device, batch: int, steps: int = 5) -> float:
    model = build(arch).to(device).train()
    params = list(model.parameters())
    x = torch.randn(batch, arch.in_chans, arch.img_size, arch.img_size, device=device)
    y = torch.randint(0, arch.num_classes, (batch,), device=device)
    train_step(model, params, x, y, device)  # warm-up
    return batch * steps / sum(train_step(model, params, x, y, device) for _ in range(steps))


STREAM_BUFFER = 500


def s3_rates(tmp: Path, folder: Path, img_size: int, store_size: int) -> dict:
    """The pre-resized shards on S3 (moto on loopback): first epoch (fetching every shard into the
    cache), second epoch (from the cache), then with no cache (`VITNAS_SHARD_CACHE=none`) by random
    access (a ranged GET per image) and streamed; and the S3 requests each makes."""
    import boto3
    from moto.server import ThreadedMotoServer

    from vitnas.data import store

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ.update({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "VITNAS_SHARD_CACHE": str(tmp / "cache")})
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        for f in sorted(folder.rglob("*.jpg")):
            client.upload_file(str(f), "bench", f"photos/{f.relative_to(folder)}")
        requests = [0]
        store.client().meta.events.register("before-send.s3", lambda **_: requests.__setitem__(0, requests[0] + 1))
        t0 = time.perf_counter()
        data = prepare("s3://bench/photos", tmp / "s3data", img_size, "s3://bench/shards", store_size)
        prep = {"seconds": time.perf_counter() - t0, "requests": requests[0]}
        out = {"prepare": prep}
        for label in S3_ROWS:
            if "no cache" in label:
                os.environ["VITNAS_SHARD_CACHE"] = "none"
            requests[0] = 0
            rate = loader_rate(data, img_size, shuffle_buffer=STREAM_BUFFER if "streamed" in label else None)[0]
            out[label] = {"images_per_s": rate, "requests": requests[0]}
        return out
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--size", type=int, default=400, help="image width in px (height 3/4 of it)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the loader runs in one process)")
    ap.add_argument("--repeats", type=int, default=5, help="measurements of each loader (interleaved)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitnas-loader-") as tmp_name:
        tmp = Path(tmp_name)
        total = make_folder(tmp / "photos", args.images, args.size)
        print(f"{args.images} JPEGs of {args.size}x{args.size * 3 // 4} px, {total / args.images / 1024:.0f} KiB "
              f"each, in {tmp / 'photos'}", flush=True)
        datasets = []
        for img_size, store_size in ((32, 36), (224, 256)):
            variants = [("image folder (JPEG files)", None, None), ("shards, original JPEG bytes", "out", None),
                        (f"shards, pre-resized to {store_size} px ({'PNG' if store_size <= 64 else 'JPEG q95'})",
                         "out", store_size)]
            for name, shards, size in variants:
                datasets.append((img_size, name, prepare(str(tmp / "photos"), tmp / f"d{img_size}-{len(datasets)}",
                                                         img_size, shards, size)))
        runs: dict[tuple[int, str], list[float]] = {(px, name): [] for px, name, _ in datasets}
        for r in range(args.repeats):  # interleaved, so each repeat's ratios pair measurements taken together
            for px, name, data in datasets:
                runs[(px, name)].append(max(loader_rate(data, px, epochs=2)))
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{px} px {name}: {v[-1]:.0f}"
                                                               for (px, name), v in runs.items()), flush=True)
        for px, name, _ in datasets:
            base = runs[(px, "image folder (JPEG files)")]
            ratios = [a / b for a, b in zip(runs[(px, name)], base, strict=True)]
            rows.append({"px": px, "input": name, "images_per_s": float(np.median(runs[(px, name)])),
                         "runs": runs[(px, name)], "ratio": float(np.median(ratios)),
                         "ratio_min": min(ratios), "ratio_max": max(ratios)})
        s3 = s3_rates(tmp, tmp / "photos", 32, 36)
    space = SearchSpace.preset("demo", img_size=32, num_classes=10, in_chans=3)
    models = {"demo largest, 32 px": model_rate(space.largest(), device, 64),
              "AutoFormer-T, 224 px": model_rate(Arch.published("autoformer-t", num_classes=10), device, 16)}

    lines = [f"## Input pipeline vs model, {args.images} synthetic {args.size} px JPEGs, one loader process, "
             f"model on {device} ({args.threads} torch thread(s))", "",
             f"Loader: median of {args.repeats} interleaved runs (each the best of 2 epochs); vs image folder: "
             "the median and range of the per-run ratios.", "",
             "| input px | input | loader images/s | vs image folder (min-max) |", "|---:|---|---:|---:|"]
    lines += [f"| {r['px']} | {r['input']} | {r['images_per_s']:.0f} | {r['ratio']:.2f}x "
              f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |" for r in rows]
    lines += ["", "| model (fwd + bwd) | images/s | loader processes to feed it (pre-resized shards / folder) |",
              "|---|---:|---|"]
    for name, rate in models.items():
        px = 32 if "32" in name else 224
        shard = [r for r in rows if r["px"] == px][-1]["images_per_s"]
        folder = [r for r in rows if r["px"] == px][0]["images_per_s"]
        lines.append(f"| {name} | {rate:.0f} | {rate / shard:.1f} / {rate / folder:.1f} |")
    lines += ["", "Pre-resized shards (36 px) on S3 (moto on loopback), 32 px input:", "",
              "| step | seconds or images/s | S3 requests |", "|---|---:|---:|",
              f"| prepare (list, get, shard, upload) | {s3['prepare']['seconds']:.1f} s | "
              f"{s3['prepare']['requests']} |"]
    for label in S3_ROWS:
        lines.append(f"| {label} | {s3[label]['images_per_s']:.0f} images/s | {s3[label]['requests']} |")
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "loader_throughput.md").write_text(text + "\n")
    (RESULTS / "loader_throughput.json").write_text(json.dumps({"args": vars(args), "loaders": rows, "models": models,
                                                                "s3": s3}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
