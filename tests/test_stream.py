"""Streamed shards (`data.shuffle_buffer`): each rank's share read once per epoch in whole batches,
a seeded order, one read per run of images (one ranged GET on S3, never a copy in the cache), images
checked by their CRC, and a training stage that streams resumes to the same result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitnas.config import parse_params
from vitnas.data import PreparedData, store, write_prepared
from vitnas.data.prepared import ShardOptions, SplitDataset
from vitnas.data.stream import epoch_windows
from vitnas.errors import ArtifactError, ConfigError
from vitnas.stages import data as data_stage
from vitnas.train.loop import epoch_loader, steps_per_epoch

BUCKET = "datasets"  # the `s3` fixture's bucket (conftest.py)


def _streamed(path, buffer: int) -> SplitDataset:
    """The train split, streamed, with images as raw pixels (so each one names itself)."""
    base = PreparedData(path).dataset("train")
    return SplitDataset(base.part, base.root, 1, lambda im: torch.as_tensor(np.array(im)), base.reader, buffer)


def _epoch(ds, **kw) -> list[int]:
    seen = []
    for x, y in epoch_loader(ds, **kw):
        ids = (x[:, 0, 0].long() + 256 * x[:, 0, 1].long())
        assert torch.equal(y, ids % 2)  # labels travel with their images
        seen += ids.tolist()
    return seen


def test_epoch_windows_split_each_epoch_into_equal_rank_shares_of_whole_batches():
    counts = [7, 5, 9, 3, 6]  # 30 images
    plans = {r: epoch_windows(counts, seed=1, epoch=0, rank=r, world_size=2, batch_size=4, buffer=9)
             for r in range(2)}
    taken: set[tuple[int, int]] = set()
    for windows in plans.values():
        assert [sum(r.stop - r.start for r in w) for w in windows] == [8, 4]  # 15 per rank -> 3 batches
        for w in windows:
            for run in w:
                assert 0 <= run.start < run.stop <= counts[run.shard]
                images = {(run.shard, i) for i in range(run.start, run.stop)}
                assert not images & taken
                taken |= images
    assert len(taken) == 24  # 30 // 2 = 15 per rank, 12 of them in whole batches
    again = epoch_windows(counts, seed=1, epoch=0, rank=0, world_size=2, batch_size=4, buffer=9)
    assert again == plans[0]
    assert epoch_windows(counts, seed=1, epoch=1, rank=0, world_size=2, batch_size=4, buffer=9) != plans[0]
    one = epoch_windows(counts, seed=1, epoch=0, rank=0, world_size=1, batch_size=4, buffer=2)
    assert [sum(r.stop - r.start for r in w) for w in one] == [4] * 7  # a buffer under a batch: one batch


def test_two_ranks_with_two_workers_stream_every_image_once_in_a_seeded_order(tmp_path, id_images):
    n = 64
    write_prepared(id_images(n), {"train": np.arange(n), "val": np.arange(0), "test": np.arange(0)}, tmp_path,
                   img_size=8, shards=ShardOptions(shard_size=10))
    ds = _streamed(tmp_path, buffer=16)
    kw = {"batch_size": 8, "seed": 0, "world_size": 2, "workers": 2}
    ranks = [_epoch(ds, epoch=2, rank=r, **kw) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(n))
    assert len(ranks[0]) == len(ranks[1]) == steps_per_epoch(n, 8, 2, "batch") * 8  # ranks stay in step
    assert _epoch(ds, epoch=2, rank=0, **kw) == ranks[0]  # the same seed, the same order
    assert _epoch(ds, epoch=3, rank=0, **kw) != ranks[0]
    # shards are written in a seeded shuffled order, so a window holds images from all over the split
    first = _epoch(ds, epoch=0, rank=0, batch_size=8, seed=0, world_size=1, workers=0)[:16]
    assert max(first) - min(first) > 32
    # random access still reads the split in its own order (the index is kept in split order)
    plain = _streamed(tmp_path, buffer=16)
    plain.shuffle_buffer = None
    assert [int(plain[i][0][0, 0]) for i in range(n)] == list(range(n))


def test_streaming_needs_shards():
    with pytest.raises(ConfigError, match="^data.shuffle_buffer: streaming reads shards; set data.shards"):
        parse_params({"data": {"shuffle_buffer": 1000}})
    assert parse_params({"data": {"shuffle_buffer": 1000, "shards": "out"}}).data.shuffle_buffer == 1000


def test_prepared_arrays_refuse_streaming_naming_the_key(digits_dir):
    with pytest.raises(ConfigError, match=r"^data.shuffle_buffer: streaming reads shards, but .*dataset.json "
                                          r"stores the splits as arrays"):
        PreparedData(digits_dir).dataset("train", shuffle_buffer=100)


def test_streaming_from_s3_is_one_ranged_get_per_run_never_fills_the_cache_and_checks_each_image(
        s3, tmp_path, monkeypatch, id_images):
    n = 120
    (tmp_path / "d").mkdir()
    write_prepared(id_images(n), {"train": np.arange(n), "val": np.arange(0), "test": np.arange(0)}, tmp_path / "d",
                   img_size=8, shards=ShardOptions(location=f"s3://{BUCKET}/ids", shard_size=25))
    cache = tmp_path / "cache"
    monkeypatch.setenv("VITNAS_SHARD_CACHE", str(cache))
    ds = _streamed(tmp_path / "d", buffer=40)
    gets = [0]
    store.client().meta.events.register("before-call.s3.GetObject", lambda **_: gets.__setitem__(0, gets[0] + 1))
    seen = _epoch(ds, batch_size=10, seed=5, epoch=0, world_size=1, workers=0)
    assert sorted(seen) == list(range(n))
    windows = epoch_windows([25, 25, 25, 25, 20], seed=5, epoch=0, rank=0, world_size=1, batch_size=10, buffer=40)
    assert gets[0] == sum(len(w) for w in windows) <= len(windows) + 5  # one GET per run, not per image
    assert not list(cache.rglob("*.tar"))  # streaming never copies a shard to local disk
    # a few scattered images (a proxy batch, calibration images): one GET each, nothing cached
    gets[0] = 0
    sparse = PreparedData(tmp_path / "d").dataset("train", sparse=True)
    [sparse[i] for i in (3, 50, 99)]
    assert gets[0] == 3 and not list(cache.rglob("*.tar"))
    # an image changed on the store (same length, so only its checksum can tell): refused
    key = "ids/train-000002.tar"
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[512 + 60] ^= 0xFF  # inside the first image's bytes (its PNG data follows one 512-byte header)
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(ArtifactError, match=r"shard train-000002.tar: an image's bytes do not match its checksum"):
        _epoch(ds, batch_size=10, seed=5, epoch=0, world_size=1, workers=0)
    # random access over a whole split fetches each shard whole into the cache (another shard here)
    whole = PreparedData(tmp_path / "d").dataset("train")
    whole[int(np.flatnonzero(whole.part.index["shard"] != 2)[0])]
    assert len(list(cache.rglob("*.tar"))) == 1


def test_a_supernet_trained_on_streamed_shards_resumes_to_the_same_result(digits_dir, tmp_path, interrupt):
    from vitnas.stages import supernet as stage
    from vitnas.supernet.trainer import SupernetTrainer

    raw = {"tracking": {"enabled": False}, "data": {"shards": "out", "shard_size": 200, "shuffle_buffer": 300},
           "space": {"embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2], "mlp_ratio": [2.0], "head_dim": 8},
           "supernet": {"epochs": 2, "warmup_epochs": 0, "batch_size": 128, "val_random_subnets": 1},
           "proxy": {"num_candidates": 10}, "search": {"population": 10, "parents": 5}}
    params = parse_params(raw)
    data_stage.run(params, tmp_path / "data", track=False)
    stage.run(params, tmp_path / "data", tmp_path / "full", progress=False)
    restore = interrupt(SupernetTrainer, "train_epoch", lambda loader, epoch, *_: epoch == 1)
    with pytest.raises(KeyboardInterrupt):
        stage.run(params, tmp_path / "data", tmp_path / "part", progress=False)
    restore()
    stage.run(params, tmp_path / "data", tmp_path / "part", resume=True, progress=False)
    a, b = (torch.load(tmp_path / d / "supernet.pt", weights_only=True)["state_dict"] for d in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = json.loads((tmp_path / "full/history.json").read_text())
    assert full == json.loads((tmp_path / "part/history.json").read_text())
    # the same run read by random access sees the images in another order: another result
    stage.run(parse_params({**raw, "data": {"shards": "out", "shard_size": 200}}), tmp_path / "data",
              tmp_path / "random", progress=False)
    assert json.loads((tmp_path / "random/history.json").read_text()) != full
