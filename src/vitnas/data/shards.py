"""Prepared splits as WebDataset-format tar shards, read back by random access or streamed.

Writing: each sample is two tar members sharing a key, `<key>.<ext>` (the image: the original
encoded bytes, or PNG of the array / of the image pre-resized to `store_size`) and `<key>.cls` (the
label as text), in shards of `shard_size` samples (`train-000000.tar`, ...): the layout that
`webdataset`, timm's `wds/` reader and the wider PyTorch ecosystem read as they are. Samples are
written in a seeded random order (an image folder lists class by class; a streamed window of
consecutive samples must hold many classes), and keyed by their position in the split. A manifest
(`shards.json`) lists every shard with its split, sample count, size and sha256; each split's index
(`<split>.npz`: label, shard, byte offset, size and CRC-32 of each image, in split order) sits
beside it.

Reading by random access (the default): `ShardReader.read` reads each image by its offset, so a
shard split behaves exactly like an in-memory split (the same sampler, seeded order, rank split and
bit-exact resume; any world size). Shards on S3 are fetched whole, once per machine, into a local
cache (`VITNAS_SHARD_CACHE`, default under the temp dir) and checked against the manifest's digest
before use; local shards are hashed on first use, once per machine and file version (a stamp in the
cache folder). With `VITNAS_SHARD_CACHE=none` S3 shards are never copied: each read is one ranged
GET, checked by the image's CRC-32 (for datasets larger than a node's disk). Streaming
(`vitnas.data.stream`, `data.shuffle_buffer`) reads a run of consecutive images as one read.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitnas.data import store
from vitnas.digests import file_sha256
from vitnas.errors import ArtifactError
from vitnas.files import read_json

MANIFEST = "shards.json"
FORMAT = "vitnas-shards/1"
LOCAL_DIR = "shards"
CACHE_ENV = "VITNAS_SHARD_CACHE"
NO_CACHE = "none"  # VITNAS_SHARD_CACHE=none: read S3 shards by ranged GETs, never copy them


@dataclass
class Sample:
    """One image to shard: its encoded bytes, file extension, label and position in the split."""

    data: bytes
    ext: str
    label: int
    pos: int


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Add a member; returns the byte offset of its data in the tar file (one 512-byte USTAR header
    block before it: names stay under 100 characters)."""
    assert len(name) < 100, name
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards: the same data gives the same bytes (and digest)
    info.mode = 0o644
    start = tar.offset
    tar.addfile(info, io.BytesIO(data))
    return start + tarfile.BLOCKSIZE


def write_split(split: str, samples: Iterable[Sample], folder: Path, shard_size: int
                ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Write `samples` (in the order given) as `folder/<split>-NNNNNN.tar`; returns (the split's
    index arrays: labels, shard, offset, size, crc, sorted by the samples' positions in the split;
    the shards' manifest entries). Shard numbers in the index are positions in this split's list of
    shards."""
    labels, shard_of, offsets, sizes, crcs, positions = [], [], [], [], [], []
    entries: list[dict[str, Any]] = []
    tar = None
    count = 0

    def close() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            path = folder / entries[-1]["name"]
            entries[-1].update(bytes=path.stat().st_size, sha256=file_sha256(path), count=count)
            tar = None

    for s in samples:
        if tar is None:
            name = f"{split}-{len(entries):06d}.tar"
            tar = tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT)
            entries.append({"name": name, "split": split})
            count = 0
        key = f"{split}-{s.pos:09d}"
        offsets.append(_member(tar, f"{key}.{s.ext}", s.data))
        _member(tar, f"{key}.cls", str(s.label).encode())
        labels.append(s.label)
        sizes.append(len(s.data))
        crcs.append(zlib.crc32(s.data))
        positions.append(s.pos)
        shard_of.append(len(entries) - 1)
        count += 1
        if count == shard_size:
            close()
    close()
    order = np.argsort(np.asarray(positions, dtype=np.int64), kind="stable")
    index = {"labels": np.asarray(labels, dtype=np.int64), "shard": np.asarray(shard_of, dtype=np.int32),
             "offset": np.asarray(offsets, dtype=np.int64), "size": np.asarray(sizes, dtype=np.int64),
             "crc": np.asarray(crcs, dtype=np.int64)}
    return {k: v[order] for k, v in index.items()}, entries


def check_crc(data: bytes, crc: int | None, where: str) -> bytes:
    """`data` if its CRC-32 is the index's (None: an index written before CRCs were kept)."""
    if crc is not None and zlib.crc32(data) != crc:
        raise ArtifactError(f"{where}: an image's bytes do not match its checksum in the shard index (changed or "
                            "corrupt since `vitnas data`); re-run `vitnas data`")
    return data


def write_manifest(out: Path, location: str, entries: Sequence[Mapping[str, Any]], classes: Sequence[str],
                   store_size: int | None) -> dict[str, Any]:
    manifest = {"format": FORMAT, "location": location, "classes": list(classes), "store_size": store_size,
                "shards": [dict(e) for e in entries]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / MANIFEST
    m = read_json(path, ArtifactError, "shard manifest", missing="not found (the data stage writes it with its shards)")
    ok = isinstance(m, dict) and m.get("format") == FORMAT and isinstance(m.get("location"), str) \
        and isinstance(m.get("shards"), list)
    if ok:
        for e in m["shards"]:
            ok = ok and isinstance(e, dict) and isinstance(e.get("name"), str) and "/" not in e["name"] \
                and e["name"] not in ("", ".", "..") and isinstance(e.get("sha256"), str) \
                and isinstance(e.get("bytes"), int) and isinstance(e.get("split"), str)
    if not ok:
        raise ArtifactError(f"{path}: not a vitnas shard manifest")
    return m


def cache_dir() -> Path:
    """Where S3 shards are cached and local shards' checks are remembered (`VITNAS_SHARD_CACHE`)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env and env != NO_CACHE else Path(tempfile.gettempdir()) / "vitnas-shards"


class ShardReader:
    """Random access to the images of one split's shards (local, or S3 through a verified cache).
    Safe in DataLoader workers: file handles are opened per process."""

    def __init__(self, data_dir: Path, split: str, manifest: Mapping[str, Any] | None = None) -> None:
        self.data_dir = data_dir
        self.manifest = dict(manifest or read_manifest(data_dir))
        self.entries = [e for e in self.manifest["shards"] if e["split"] == split]
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _cached(self, k: int) -> Path:
        e = self.entries[k]
        return cache_dir() / e["sha256"][:2] / f"{e['sha256']}.tar"

    def path(self, k: int) -> Path:
        """The local, digest-checked file of shard `k` (fetched into the cache first when on S3)."""
        e = self.entries[k]
        location = self.manifest["location"]
        if store.is_s3(location):
            local = self._cached(k)
            if not local.is_file():  # fetched and checked once per machine; the name is the digest
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.part")
                uri = store.S3Uri.parse(location, "data.shards").join(e["name"])
                store.download(uri, tmp, "data.shards")
                self._verify(tmp, e, str(uri))
                os.replace(tmp, local)
            return local
        if location != LOCAL_DIR:
            raise ArtifactError(f"{self.data_dir / MANIFEST}: location {location!r} is neither {LOCAL_DIR!r} nor "
                                "an s3:// URI")
        local = self.data_dir / LOCAL_DIR / e["name"]
        if not local.is_file():
            raise ArtifactError(f"{local}: shard not found (re-run `vitnas data`)")
        st = local.stat()
        stamp = cache_dir() / "verified" / f"{e['sha256']}-{st.st_size}-{st.st_ino}-{st.st_mtime_ns}"
        if not stamp.exists():  # hashed once per machine and file version, not in every worker and epoch
            self._verify(local, e, str(local))
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
        return local

    @staticmethod
    def _verify(path: Path, entry: Mapping[str, Any], where: str) -> None:
        if path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
            if path.name.endswith(".part"):
                path.unlink(missing_ok=True)
            raise ArtifactError(f"{where}: shard does not match its digest in {MANIFEST} (changed or truncated); "
                                "re-run `vitnas data`")

    def read(self, k: int, offset: int, size: int, *, whole_shard: bool = True) -> bytes:
        """`size` bytes at `offset` of shard `k`. On S3 a shard is fetched whole into the cache when
        `whole_shard` (its every image will be read: an epoch or a whole split by random access);
        else, and always with `VITNAS_SHARD_CACHE=none`, one ranged GET reads just these bytes
        (streamed windows, a few scattered images), unless the shard is cached already."""
        location = self.manifest["location"]
        if store.is_s3(location) and (os.environ.get(CACHE_ENV) == NO_CACHE
                                      or (not whole_shard and not self._cached(k).is_file())):
            # no local copy: the shard's digest cannot be checked without reading it whole; the
            # caller checks each image's CRC-32
            uri = store.S3Uri.parse(location, "data.shards").join(self.entries[k]["name"])
            data = store.get_range(uri, offset, size, "data.shards")
        else:
            if os.getpid() != self._pid:  # a forked DataLoader worker: its own handles
                self._files, self._pid = {}, os.getpid()
            with self._lock:
                f = self._files.get(k)
                if f is None:
                    f = self._files[k] = open(self.path(k), "rb")  # noqa: SIM115 (kept open: random access)
                f.seek(offset)
                data = f.read(size)
        if len(data) != size:
            raise ArtifactError(f"shard {self.entries[k]['name']}: shorter than {MANIFEST} says at byte {offset} "
                                "(changed since `vitnas data`?)")
        return data


def check_index(index: Mapping[str, np.ndarray], entries: Sequence[Mapping[str, Any]], f: Path) -> None:
    """Shard numbers in range and every image's bytes inside its shard (before anything is read)."""
    shard, offset, size = index["shard"], index["offset"], index["size"]
    n = len(index["labels"])
    arrays = [shard, offset, size] + ([index["crc"]] if "crc" in index else [])
    if any(len(a) != n or a.dtype.kind not in "iu" for a in arrays):
        raise ArtifactError(f"{f}: shard index arrays must be integers of one length")
    if n == 0:
        return
    if shard.min() < 0 or shard.max() >= len(entries) or offset.min() < 0 or size.min() < 0:
        raise ArtifactError(f"{f}: shard index out of range")
    limits = np.asarray([e["bytes"] for e in entries], dtype=np.int64)
    if np.any(offset + size > limits[shard]):
        raise ArtifactError(f"{f}: an image's bytes lie outside its shard")


def upload_shards(folder: Path, entries: Sequence[Mapping[str, Any]], uri: str) -> None:
    """Put the shard files at `uri` (an s3:// prefix)."""
    base = store.S3Uri.parse(uri, "data.shards")
    for e in entries:
        store.upload(folder / e["name"], base.join(e["name"]))
