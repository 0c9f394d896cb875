"""The data stage's artifact: prepared splits plus `dataset.json`, and their readers.

Array datasets are stored as uint8 images per split (`train.npz`, ...); image folders as file
lists relative to the recorded root. Every later stage reads data only through `PreparedData`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitnas.data import shards as shards_mod
from vitnas.data import store
from vitnas.data.sources import RawDataset, RawPart
from vitnas.data.transforms import eval_transform, train_transform
from vitnas.errors import ArtifactError, ConfigError, DataError
from vitnas.files import read_json
from vitnas.progress import progress
from vitnas.space.arch import LIMITS

SPLITS = ("train", "val", "test")
FORMAT = "vitnas-data/1"


def _take(part: RawPart, idx: np.ndarray) -> RawPart:
    return RawPart(labels=part.labels[idx],
                   images=None if part.images is None else part.images[idx],
                   paths=None if part.paths is None else part.paths[idx])


def _channel_stats(images: np.ndarray | None, in_chans: int) -> tuple[list[float], list[float]]:
    if images is None:  # image folders: ImageNet statistics, as timm models expect
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)
    x = images.reshape(-1, in_chans).astype(np.float64) / 255.0
    return [round(float(v), 6) for v in x.mean(0)], [round(float(v), 6) for v in x.std(0) + 1e-6]


@dataclass(frozen=True)
class ShardOptions:
    """How the data stage shards the splits (`vitnas.data.shards`): `location` is "shards" (inside
    the output) or an s3:// prefix; `store_size` pre-resizes file images (None: original bytes)."""

    location: str = shards_mod.LOCAL_DIR
    store_size: int | None = None
    shard_size: int = 1000
    skip_bad: bool = False
    threads: int = 16
    seed: int = 0  # the order samples are written in (shuffled: streamed windows mix classes)


def write_prepared(raw: RawDataset, splits: Mapping[str, np.ndarray], out: Path, *, img_size: int,
                   extra: Mapping[str, Any] | None = None, shards: ShardOptions | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict[str, Any]:
    """Write the split files and `dataset.json` into `out` (an empty directory); with `shards`, the
    splits as tar shards plus their index and manifest instead. `mean`/`std` replace the computed
    (arrays) or ImageNet (files) normalisation. `dataset.json` records how many val and test images
    are byte-identical to an image of an earlier split (`duplicates_across_splits`)."""
    parts: dict[str, RawPart] = {}
    for name in SPLITS:
        if name == "test" and "test" not in splits:
            parts[name] = raw.test  # the dataset's official test set
        else:
            parts[name] = _take(raw.train, splits[name])
    skipped = 0
    digests: dict[str, list[bytes]] = {}
    (out / shards_mod.LOCAL_DIR).mkdir(exist_ok=True)  # always there (empty when unused): one set of outputs
    if shards is not None:
        counts, skipped = _write_shards(raw, parts, out, shards, digests)
    else:
        shards_mod.write_manifest(out, shards_mod.LOCAL_DIR, [], raw.classes, None)
        digests = {name: _digests(raw, part) for name, part in parts.items()}
        for name, part in parts.items():
            arrays = {"labels": part.labels}
            if part.images is not None:
                arrays["images"] = part.images
            else:
                arrays["paths"] = part.paths
            np.savez(out / f"{name}.npz", **arrays)
        counts = {name: len(parts[name]) for name in SPLITS}
    computed = _channel_stats(parts["train"].images, raw.in_chans)
    mean, std = list(mean or computed[0]), list(std or computed[1])
    dup = duplicates(digests)
    meta = {
        "format": FORMAT,
        "name": raw.name,
        "num_classes": len(raw.classes),
        "classes": raw.classes,
        "img_size": img_size,
        "in_chans": raw.in_chans,
        "storage": "shards" if shards is not None else "arrays" if raw.train.images is not None else "files",
        "root": raw.root,
        "mean": mean,
        "std": std,
        "splits": counts,
        **({"skipped_bad_images": skipped} if shards is not None and shards.skip_bad else {}),
        "duplicates_across_splits": dup[0],
        **({"duplicate_example": dup[1]} if dup[1] else {}),
        **dict(extra or {}),
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _digests(raw: RawDataset, part: RawPart) -> list[bytes]:
    """A digest of each image's bytes (array images: their pixels; files: the file)."""
    if part.images is not None:
        return [_digest(img.tobytes()) for img in part.images]
    from concurrent.futures import ThreadPoolExecutor

    from vitnas.data.sources import read_file

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda rel: _digest(read_file(raw.root, str(rel))), part.paths))


def duplicates(digests: Mapping[str, Sequence[bytes]]) -> tuple[int, str | None]:
    """(number of val and test images whose bytes equal an image of an earlier split (train, then
    val), an example "split #i = split #j")."""
    seen: dict[bytes, tuple[str, int]] = {}
    count, example = 0, None
    for split in SPLITS:
        for i, d in enumerate(digests.get(split, ())):
            first = seen.get(d)
            if first is not None and first[0] != split:
                count += 1
                example = example or f"{split} #{i} = {first[0]} #{first[1]}"
            seen.setdefault(d, (split, i))
    return count, example


def _write_shards(raw: RawDataset, parts: Mapping[str, RawPart], out: Path, opts: ShardOptions,
                  digests: dict[str, list[bytes]]) -> tuple[dict[str, int], int]:
    """Every split as shards (into `out/shards/`, or uploaded to an s3:// prefix), each split's
    index as `<split>.npz` and the manifest; returns (split counts, images skipped as bad)."""
    import shutil
    import tempfile

    remote = store.is_s3(opts.location)
    if remote:
        _check_shard_prefix(opts.location)
    folder = Path(tempfile.mkdtemp(prefix=".shards-", dir=out)) if remote else out / shards_mod.LOCAL_DIR
    entries: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    bad = [0]
    try:
        for name in SPLITS:
            found: list[tuple[int, bytes]] = []
            order = np.random.default_rng([opts.seed, SPLITS.index(name)]).permutation(len(parts[name]))
            samples = progress(_samples(raw, parts[name], order, opts, bad, found), total=len(parts[name]),
                               desc=f"sharding {name}", unit="images", every_s=30)  # hours for ImageNet from S3
            index, split_entries = shards_mod.write_split(name, samples, folder, opts.shard_size)
            digests[name] = [d for _, d in sorted(found)]
            np.savez(out / f"{name}.npz", **index)
            counts[name] = len(index["labels"])
            if remote:
                shards_mod.upload_shards(folder, split_entries, opts.location)
                for e in split_entries:
                    (folder / e["name"]).unlink()
            entries += split_entries
    finally:
        if remote:
            shutil.rmtree(folder, ignore_errors=True)
    shards_mod.write_manifest(out, opts.location if remote else shards_mod.LOCAL_DIR, entries, raw.classes,
                              opts.store_size)
    if remote:  # beside the shards too: it marks the prefix as vitnas's for the next run
        prefix = store.S3Uri.parse(opts.location, "data.shards")
        store.upload(out / shards_mod.MANIFEST, prefix.join(shards_mod.MANIFEST))
    return counts, bad[0]


def _check_shard_prefix(location: str) -> None:
    """An s3:// shard prefix must be empty or hold only an earlier vitnas manifest and its shards:
    vitnas never replaces objects it did not write."""
    uri = store.S3Uri.parse(location, "data.shards")
    store.check_bucket(uri, "data.shards")
    keys = {k for k, _ in store.list_objects(uri, "data.shards")}
    if not keys:
        return
    ours: set[str] = set()
    if shards_mod.MANIFEST in keys:
        try:
            m = json.loads(store.get_bytes(uri.join(shards_mod.MANIFEST), "data.shards"))
            if isinstance(m, dict) and m.get("format") == shards_mod.FORMAT:
                ours = {shards_mod.MANIFEST} | {e.get("name") for e in m.get("shards", []) if isinstance(e, dict)}
        except ValueError:
            pass
    foreign = sorted(keys - ours)
    if foreign:
        raise DataError(f"data.shards: {location}: holds objects vitnas did not write ({foreign[0]}"
                        f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); give an empty prefix")


def _samples(raw: RawDataset, part: RawPart, order: np.ndarray, opts: ShardOptions, bad: list[int],
             digests: list[tuple[int, bytes]]):
    """The split's images as shard samples, in `order` (positions in the split); files are fetched
    and checked by a thread pool (S3 reads and decoding overlap), `bad[0]` counts the ones skipped,
    `digests` gets (position, digest of the original bytes) of each kept image."""
    from concurrent.futures import ThreadPoolExecutor

    from vitnas.data.images import BadImage, encode_array, encode_file
    from vitnas.data.shards import Sample
    from vitnas.data.sources import read_file

    if part.images is not None:
        for i in order.tolist():
            digests.append((i, _digest(part.images[i].tobytes())))
            yield Sample(encode_array(part.images[i]), "png", int(part.labels[i]), i)
        return

    def load(i: int):
        rel = str(part.paths[i])
        try:
            data = read_file(raw.root, rel)
            return (*encode_file(data, rel, raw.in_chans, opts.store_size), _digest(data))
        except BadImage as e:
            if opts.skip_bad:
                return None
            raise DataError(f"data.root: {raw.root}/{rel}: {e} (set data.skip_bad_images: true to leave such "
                            "files out)") from None
        except OSError as e:
            raise DataError(f"data.root: {raw.root}/{rel}: cannot read ({e.strerror or type(e).__name__})") from None

    chunk = 1024
    with ThreadPoolExecutor(opts.threads) as pool:
        for start in range(0, len(part), chunk):
            idx = order[start:start + chunk].tolist()
            for i, got in zip(idx, pool.map(load, idx), strict=True):
                if got is None:
                    bad[0] += 1
                    continue
                digests.append((i, got[2]))
                yield Sample(got[0], got[1], int(part.labels[i]), i)


class SplitDataset(Dataset):
    """One split as (image tensor, label), with the given transform."""

    def __init__(self, part: RawPart, root: str | None, in_chans: int, transform,
                 reader: shards_mod.ShardReader | None = None, shuffle_buffer: int | None = None,
                 sparse: bool = False) -> None:
        self.part, self.root, self.in_chans, self.transform = part, root, in_chans, transform
        self.reader, self.shuffle_buffer, self.sparse = reader, shuffle_buffer, sparse
        self._layout = None  # streaming: the split's file order, computed once (vitnas.data.stream)

    def __len__(self) -> int:
        return len(self.part)

    def stream_epoch(self, *, seed: int, epoch: int, rank: int, world_size: int, batch_size: int):
        """This rank's share of one epoch as a streamed `IterableDataset` (`vitnas.data.stream`), or
        None when the split is read by random access (no `shuffle_buffer`)."""
        if self.shuffle_buffer is None:
            return None
        from vitnas.data.stream import StreamedEpoch, epoch_windows, file_layout

        if self._layout is None:
            self._layout = file_layout(self.part.index, len(self.reader.entries))
        windows = epoch_windows(np.diff(self._layout[1]).tolist(), seed=seed, epoch=epoch, rank=rank,
                                world_size=world_size, batch_size=batch_size, buffer=self.shuffle_buffer)
        return StreamedEpoch(self, windows, self._layout, seed=seed, epoch=epoch, rank=rank)

    def image(self, i: int) -> Image.Image:
        if self.part.images is not None:
            a = self.part.images[i]
            return Image.fromarray(a[..., 0], mode="L") if self.in_chans == 1 else Image.fromarray(a)
        if self.reader is not None:
            ix = self.part.index
            k = int(ix["shard"][i])
            data = self.reader.read(k, int(ix["offset"][i]), int(ix["size"][i]), whole_shard=not self.sparse)
            src = io.BytesIO(shards_mod.check_crc(data, int(ix["crc"][i]) if "crc" in ix else None,
                                                  f"shard {self.reader.entries[k]['name']}"))
        elif store.is_s3(self.root) or store.is_fs(self.root):
            from vitnas.data.sources import read_file

            src = io.BytesIO(read_file(self.root, str(self.part.paths[i])))
        else:
            src = Path(self.root) / str(self.part.paths[i])
        return self.decode(src)

    def decode(self, src) -> Image.Image:
        """An encoded image (a path or a file object) as the split's mode (greyscale or RGB)."""
        with Image.open(src) as im:
            return im.convert("L" if self.in_chans == 1 else "RGB")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.image(i)), int(self.part.labels[i])


def _check_meta(meta: dict, meta_file: Path) -> None:
    """Types and ranges of dataset.json, before any array is read or any model sized from it."""
    def bad(key: str, want: str) -> ArtifactError:
        return ArtifactError(f"{meta_file}: '{key}' must be {want}, got {meta.get(key)!r}"[:300])

    def is_int(v: Any, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    for key in ("num_classes", "img_size", "in_chans", "mean", "std", "splits"):
        if key not in meta:
            raise ArtifactError(f"{meta_file}: missing key '{key}'")
    if not is_int(meta["num_classes"], 1, LIMITS["num_classes"]):
        raise bad("num_classes", f"an integer in 1..{LIMITS['num_classes']:,}")
    if not is_int(meta["img_size"], 1, LIMITS["img_size"]):
        raise bad("img_size", f"an integer in 1..{LIMITS['img_size']}")
    if not is_int(meta["in_chans"], 1, LIMITS["in_chans"]):
        raise bad("in_chans", f"an integer in 1..{LIMITS['in_chans']}")
    for key in ("mean", "std"):
        v = meta[key]
        if not (isinstance(v, list) and len(v) == meta["in_chans"]
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise bad(key, f"a list of {meta['in_chans']} finite numbers")
    if any(x <= 0 for x in meta["std"]):
        raise bad("std", "positive")
    splits = meta["splits"]
    if not (isinstance(splits, dict) and all(is_int(splits.get(k), 0, 2**40) for k in SPLITS)):
        raise bad("splits", "{train, val, test} counts (non-negative integers)")
    if "name" in meta and not isinstance(meta["name"], str):
        raise bad("name", "a string")
    if meta.get("root") is not None and not isinstance(meta["root"], str):
        raise bad("root", "a path string or null")


class PreparedData:
    """Reader of a data stage output directory; fails with the file name when it is unusable."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / "dataset.json"
        self.meta = read_json(meta_file, ArtifactError, "dataset description",
                              missing="not found (run `vitnas data` first)")
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            raise ArtifactError(f"{meta_file}: not a vitnas dataset description (format != {FORMAT})")
        _check_meta(self.meta, meta_file)
        self._parts: dict[str, RawPart] = {}
        self._manifest: dict[str, Any] | None = None
        self._eval_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    num_classes = property(lambda self: int(self.meta["num_classes"]))
    img_size = property(lambda self: int(self.meta["img_size"]))
    in_chans = property(lambda self: int(self.meta["in_chans"]))
    name = property(lambda self: str(self.meta["name"]))

    def part(self, split: str) -> RawPart:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._parts:
            f = self.path / f"{split}.npz"
            try:
                with np.load(f, allow_pickle=False) as z:
                    part = RawPart(labels=z["labels"], images=z["images"] if "images" in z else None,
                                   paths=z["paths"] if "paths" in z else None,
                                   index={k: z[k] for k in ("shard", "offset", "size", "crc") if k in z}
                                   if "shard" in z else None)
            except FileNotFoundError:
                raise ArtifactError(f"{f}: not found (re-run `vitnas data`)") from None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
                raise ArtifactError(f"{f}: corrupt split file ({type(e).__name__})") from None
            if len(part) != self.meta["splits"].get(split):
                raise ArtifactError(f"{f}: holds {len(part)} samples, dataset.json says "
                                    f"{self.meta['splits'].get(split)}")
            self._check_part(part, f)
            self._parts[split] = part
        return self._parts[split]

    def _check_part(self, part: RawPart, f: Path) -> None:
        """Labels in range, images of the recorded shape, file paths inside the recorded root."""
        labels = part.labels
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ArtifactError(f"{f}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ArtifactError(f"{f}: labels outside 0..{self.num_classes - 1} (found {labels.min()}..{labels.max()}; "
                                "num_classes from dataset.json)")
        if part.images is not None:
            im = part.images
            if im.dtype != np.uint8 or im.ndim != 4 or im.shape[0] != len(labels) or im.shape[3] != self.in_chans:
                raise ArtifactError(f"{f}: images must be uint8 [N, H, W, {self.in_chans}], got {im.dtype} "
                                    f"{list(im.shape)}")
        elif part.index is not None:
            if self.meta.get("storage") != "shards":
                raise ArtifactError(f"{f}: a shard index, but dataset.json's storage is not 'shards'")
            split = f.stem
            entries = [e for e in self.manifest()["shards"] if e["split"] == split]
            shards_mod.check_index({"labels": labels, **part.index}, entries, f)
        elif part.paths is not None:
            if self.meta.get("root") is None or part.paths.dtype.kind != "U" or len(part.paths) != len(labels):
                raise ArtifactError(f"{f}: file lists need string paths and dataset.json 'root'")
            suspects = part.paths[np.char.startswith(part.paths, "/") | (np.char.find(part.paths, "..") >= 0)]
            for p in suspects:  # vectorised pre-filter: a million paths check in well under a second
                rel = Path(str(p))
                if rel.is_absolute() or ".." in rel.parts:
                    raise ArtifactError(f"{f}: path {str(p)!r} leaves the dataset root (absolute or '..')")
        else:
            raise ArtifactError(f"{f}: holds neither images nor paths")

    def dataset(self, split: str, *, train: bool = False, augment: Mapping[str, Any] | None = None,
                img_size: int | None = None, shuffle_buffer: int | None = None, sparse: bool = False) -> SplitDataset:
        """A torch Dataset; `train=True` applies timm's training augmentation. `shuffle_buffer`:
        training epochs stream the shards (`vitnas.data.stream`) instead of reading by random access.
        `sparse`: only a few images will be read (a proxy batch, calibration images), so S3 shards
        are read by ranged GETs, not fetched whole into the cache."""
        if shuffle_buffer is not None and self.meta.get("storage") != "shards":
            raise ConfigError(f"data.shuffle_buffer: streaming reads shards, but {self.path / 'dataset.json'} "
                              f"stores the splits as {self.meta.get('storage')}; set data.shards and re-run "
                              "`vitnas data`, or set data.shuffle_buffer to null")
        size = img_size or self.img_size
        mean, std = self.meta["mean"], self.meta["std"]
        aug = dict(augment or {})
        tf = train_transform(size, self.in_chans, mean, std, aug) if train else \
            eval_transform(size, self.in_chans, mean, std, aug.get("interpolation", "bilinear"))
        part = self.part(split)
        reader = shards_mod.ShardReader(self.path, split, self.manifest()) if part.index is not None else None
        return SplitDataset(part, self.meta.get("root"), self.in_chans, tf, reader, shuffle_buffer, sparse)

    def _check_eval_memory(self, split: str) -> None:
        """Refuse, before reading an image, a split whose tensors would take more than half the
        memory (an ImageNet-size val split at 224 px is tens of GiB)."""
        from vitnas.space.memory import LIMIT_ENV, gib, memory_limit

        n = self.meta["splits"][split]
        per_image = 4 * self.in_chans * self.img_size**2
        limit = memory_limit()
        if n * per_image > limit // 2:
            key = {"train": "data.max_train_images", "val": "data.val_fraction", "test": "data.test_fraction"}[split]
            fits = max(1, limit // 4 // per_image)
            raise ConfigError(f"{key}: the {split} split is held in memory as float32 tensors here: {n:,} images "
                              f"of {self.in_chans}x{self.img_size}x{self.img_size} need {gib(n * per_image)}, more "
                              f"than half of the {gib(limit)} of memory ({LIMIT_ENV}); set {key} to an image count "
                              f"such as {min(fits, 10_000):,}")

    def manifest(self) -> dict[str, Any]:
        """The shard manifest (`shards.json`) of a sharded dataset."""
        if self._manifest is None:
            self._manifest = shards_mod.read_manifest(self.path)
        return self._manifest

    def eval_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split, eval-transformed, as (images, labels) tensors: for fast repeated eval
        of many subnets on small splits. Cached per split."""
        if split not in self._eval_cache:
            self._check_eval_memory(split)
            ds = self.dataset(split)
            xs = torch.stack([ds[i][0] for i in range(len(ds))]) if len(ds) else \
                torch.empty(0, self.in_chans, self.img_size, self.img_size)
            self._eval_cache[split] = (xs, torch.as_tensor(ds.part.labels, dtype=torch.long))
        return self._eval_cache[split]
