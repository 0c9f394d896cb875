"""Streaming a sharded split: shards in a seeded order, read a run of images at a time, shuffled
within windows (`data.shuffle_buffer`).

Random access (the default reader) needs each image's bytes on its own: from a local copy of every
shard, or one ranged GET per image. Streaming is for a split bigger than a node's disk: each read
fetches a run of consecutive images of one shard (on S3 one ranged GET per run, never a copy in the
shard cache), and only a window of images is held at a time.

An epoch's plan is a pure function of the shards' image counts, the seed, the epoch, the rank and
world size, the batch size and the buffer, so a resumed run replays it exactly:
1. the split's shards are permuted with (seed, epoch) and their images, in file order, form one
   sequence; rank r takes its r-th equal share (equal shares keep ranks in step; the remainder of
   N / world_size is left out this epoch, as the random-access sampler does);
2. the share's first `steps * batch_size` images (`steps`: full batches) are cut into windows of
   `shuffle_buffer` images rounded down to whole batches (at least one batch); window g goes to
   DataLoader worker g % workers, so each image is read by exactly one process;
3. a window is read as one run per shard it spans and its images are shuffled with
   (seed, epoch, rank, g); batches never span windows.
The order depends on the number of DataLoader workers (the DataLoader takes batches from its
workers in turn), so a resumed run must keep `workers` to replay exactly.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vitnas.data.shards import check_crc


@dataclass(frozen=True)
class Run:
    """Images `start:stop` (file order) of shard `shard`."""

    shard: int
    start: int
    stop: int


def _rng(*keys: object) -> np.random.Generator:
    return np.random.default_rng(random.Random(repr(keys)).getrandbits(64))


def epoch_windows(counts: list[int], *, seed: int, epoch: int, rank: int, world_size: int, batch_size: int,
                  buffer: int) -> list[list[Run]]:
    """This rank's windows of one epoch, each a list of runs (see the module docstring)."""
    shard_order = _rng("shards", seed, epoch).permutation(len(counts))
    sizes = np.asarray(counts, dtype=np.int64)[shard_order]
    ends = np.cumsum(sizes)
    begins = ends - sizes
    share = int(sizes.sum()) // world_size
    first, last = rank * share, rank * share + share // batch_size * batch_size  # this rank's positions
    per_window = max(1, buffer // batch_size) * batch_size
    windows = []
    for lo in range(first, last, per_window):
        hi = min(lo + per_window, last)
        runs = []
        j = int(np.searchsorted(ends, lo, side="right"))  # the first shard ending after lo
        while j < len(sizes) and begins[j] < hi:
            a, b = max(lo, begins[j]), min(hi, ends[j])
            if b > a:
                runs.append(Run(int(shard_order[j]), int(a - begins[j]), int(b - begins[j])))
            j += 1
        windows.append(runs)
    return windows


def file_layout(index, num_shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(split positions in file order, shard by shard; where each shard starts in that order): the
    same for every epoch of a split."""
    order = np.lexsort((index["offset"], index["shard"]))
    return order, np.searchsorted(index["shard"][order], np.arange(num_shards + 1))


class StreamedEpoch(IterableDataset):
    """One epoch of a sharded split as (image tensor, label), read window by window."""

    def __init__(self, dataset, windows: list[list[Run]], layout: tuple[np.ndarray, np.ndarray], *, seed: int,
                 epoch: int, rank: int) -> None:
        self.dataset, self.windows = dataset, windows
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self._file_order, self._starts = layout

    def __len__(self) -> int:
        return sum(r.stop - r.start for w in self.windows for r in w)

    def _read(self, run: Run) -> list[tuple[bytes, int]]:
        """(image bytes, label) of each image of `run`, from one read."""
        ix, reader = self.dataset.part.index, self.dataset.reader
        ids = self._file_order[self._starts[run.shard] + run.start:self._starts[run.shard] + run.stop]
        offsets, sizes = ix["offset"][ids], ix["size"][ids]
        first = int(offsets[0])
        blob = reader.read(run.shard, first, int(offsets[-1] + sizes[-1]) - first, whole_shard=False)
        where = f"shard {reader.entries[run.shard]['name']}"
        out = []
        for i, o, n in zip(ids.tolist(), offsets.tolist(), sizes.tolist(), strict=True):
            data = blob[o - first:o - first + n]
            crc = int(ix["crc"][i]) if "crc" in ix else None
            out.append((check_crc(data, crc, where), int(self.dataset.part.labels[i])))
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ds = self.dataset
        for g in range(worker, len(self.windows), workers):
            items = [item for run in self.windows[g] for item in self._read(run)]
            for j in _rng("window", self.seed, self.epoch, self.rank, g).permutation(len(items)).tolist():
                data, label = items[j]
                yield ds.transform(ds.decode(io.BytesIO(data))), label
