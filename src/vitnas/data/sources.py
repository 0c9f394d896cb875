"""Raw datasets as arrays or file lists, before splitting.

Small datasets (digits, CIFAR) are held as uint8 NHWC arrays; image folders as file paths, so a
large folder is indexed, never copied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitnas.data import store
from vitnas.data.mnist import NAMES as MNIST_FORMAT
from vitnas.errors import DataError


@dataclass
class RawPart:
    """One predefined part of a dataset (train, or an official test set)."""

    labels: np.ndarray  # int64 [N]
    images: np.ndarray | None = None  # uint8 [N, H, W, C]
    paths: np.ndarray | None = None  # str [N], relative to RawDataset.root
    index: dict[str, np.ndarray] | None = None  # prepared shards only: shard, offset, size (, crc) [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RawDataset:
    name: str
    classes: list[str]
    in_chans: int
    train: RawPart
    test: RawPart | None = None  # None: carve a test split from train
    root: str | None = None  # for file-based datasets


def load_digits() -> RawDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes): works offline."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    return RawDataset(name="digits", classes=[str(i) for i in range(10)], in_chans=1,
                      train=RawPart(labels=d.target.astype(np.int64), images=images))


def load_cifar(name: str, root: str, download: bool = False) -> RawDataset:
    """CIFAR-10/100 in the python format (``cifar-10-batches-py/`` under `root`), read by a
    restricted unpickler (`vitnas.data.cifar`): a planted file cannot run code."""
    from vitnas.data.cifar import download_cifar, layout, read_cifar_folder

    if download:
        try:
            download_cifar(root, name)
        except Exception as e:  # network errors, a bad archive
            raise DataError(f"data.download: could not download {name} into {root}: {type(e).__name__}: "
                            f"{str(e)[:120]}") from None
    folder = Path(root) / layout(name).base_folder
    if not folder.is_dir():
        raise DataError(f"data.root: {name} not found at {folder} (set data.download: true on a machine with "
                        "internet access)")
    try:
        c = read_cifar_folder(root, name)
    except DataError as e:
        raise DataError(f"data.root: {e}") from None
    return RawDataset(name=name, classes=c.classes, in_chans=3,
                      train=RawPart(labels=c.train_labels, images=c.train_images),
                      test=RawPart(labels=c.test_labels, images=c.test_images))


def load_mnist_format(name: str, root: str | None, download: bool = False) -> RawDataset:
    """MNIST, Fashion-MNIST or KMNIST from the four idx files (`vitnas.data.mnist`); Fashion-MNIST
    defaults to Debian's install location when `root` is not given."""
    from vitnas.data import mnist

    root = root or mnist.default_root(name) or ""
    if download:
        try:
            mnist.download(name, root)
        except Exception as e:  # network errors, a bad archive
            raise DataError(f"data.download: could not download {name} into {root}: {type(e).__name__}: "
                            f"{str(e)[:120]}") from None
    folder = mnist.find_folder(name, root)
    classes = mnist.CLASSES[name]
    train_x, train_y = mnist.read_split(folder, "train", len(classes))
    test_x, test_y = mnist.read_split(folder, "test", len(classes))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"data.root: {folder}: train images are {train_x.shape[1:3]}, test {test_x.shape[1:3]}")
    return RawDataset(name=name, classes=list(classes), in_chans=1, train=RawPart(labels=train_y, images=train_x),
                      test=RawPart(labels=test_y, images=test_x))


def _split_folders(names: set[str]) -> tuple[str | None, str | None]:
    """(train folder, held-out folder) of a class-per-folder tree: `train/` with `test/` (or, in the
    ImageNet layout, `val/`: its labelled val set serves as the official test split), or the root
    itself with none."""
    if "train" not in names:
        return None, None
    return "train", "test" if "test" in names else "val" if "val" in names else None


def load_imagefolder(root: str) -> RawDataset:
    """A class-per-folder tree, local or under an `s3://` prefix: `root/train/<class>/*` (+ `root/test`
    or, as ImageNet has it, `root/val`, used as the official test split), else `root/<class>/*`."""
    if store.is_s3(root):
        uri = store.S3Uri.parse(root)
        store.check_bucket(uri, "data.root")
        return _listed_imagefolder(store.list_objects(uri), str(uri))
    if store.is_fs(root):
        return _listed_imagefolder(store.fs_list(root), root)
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"data.root: image folder {base} does not exist")
    return _listed_imagefolder(_local_list(base), str(base.resolve()))


def _local_list(base: Path):
    """(relative path, size) of every file under `base` in path order, and "dir/" (size 0) for each
    empty directory, as an S3 listing has them; a symbolic link that leaves `base` is an error."""
    real = base.resolve()
    found = []
    for d, dirs, files in os.walk(base, followlinks=False):
        dirs.sort()
        rel_dir = Path(d).relative_to(base)
        if not dirs and not [f for f in files if not f.startswith(".")] and rel_dir != Path("."):
            found.append((f"{rel_dir.as_posix()}/", 0))
        for f in files:
            path = Path(d) / f
            rel = (rel_dir / f).as_posix()
            if path.is_symlink() and real not in path.resolve().parents:
                raise DataError(f"data.root: {path}: a symbolic link that leaves the dataset root")
            found.append((rel, path.stat().st_size if path.exists() else 0))
    return sorted(found)


def _listed_imagefolder(listing, root: str) -> RawDataset:
    """The same tree under an S3 prefix or a DVC path, indexed from a listing of (relative key, size)
    (nothing is downloaded here)."""
    from vitnas.data.images import is_image_name

    files: dict[str, list[str]] = {}  # "<top>/<class>" or "<class>" -> relative keys
    empty: set[str] = set()
    tops: set[str] = set()
    for key, size in listing:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
            raise DataError(f"data.root: {root}/{key}: the key leaves the dataset root ('.', '..' or an empty "
                            "part)")
        if key.endswith("/"):  # a "folder" marker object
            if size == 0 and len(parts) >= 2:
                empty.add("/".join(parts[:-1]))
            continue
        if parts[-1].startswith("."):  # .DS_Store and the like
            continue
        if len(parts) < 2:
            continue  # a file beside the class folders (a README, a licence)
        tops.add(parts[0])
        files.setdefault("/".join(parts[:-1]), []).append(key)
    if not files:
        raise DataError(f"data.root: {root}: no class folders with images (expected CLASS/IMAGE or "
                        "train/CLASS/IMAGE objects)")
    train_name, test_name = _split_folders(tops)

    def index(top: str | None) -> tuple[list[str], RawPart]:
        prefix = f"{top}/" if top else ""
        folders = {f[len(prefix):]: keys for f, keys in files.items() if f.startswith(prefix) and
                   "/" not in f[len(prefix):]}
        nested = [f for f in files if f.startswith(prefix) and "/" in f[len(prefix):]]
        if nested:
            raise DataError(f"data.root: {root}/{nested[0]}: nested folders inside a class folder")
        classes = sorted(folders)
        for e in sorted(empty):
            if e.startswith(prefix) and "/" not in e[len(prefix):] and e[len(prefix):] not in folders:
                raise DataError(f"data.root: {root}/{e}: empty class folder")
        paths, labels = [], []
        for c, name in enumerate(classes):
            for key in sorted(folders[name]):
                if not is_image_name(key):
                    raise DataError(f"data.root: {root}/{key}: not an image file (extensions: .jpg, .jpeg, .png, "
                                    ".ppm, .bmp, .pgm, .tif, .tiff, .webp)")
                paths.append(key)
                labels.append(c)
        return classes, RawPart(labels=np.asarray(labels, dtype=np.int64), paths=np.asarray(paths))

    classes, train = index(train_name)
    test = None
    if test_name:
        test_classes, test = index(test_name)
        if test_classes != classes:
            raise DataError(f"data.root: {root}/{test_name} has classes {test_classes[:5]}..., train has "
                            f"{classes[:5]}...")
    return RawDataset(name="imagefolder", classes=classes, in_chans=3, train=train, test=test, root=root)


def read_file(root: str, rel: str) -> bytes:
    """The bytes of file `rel` of a dataset rooted at `root` (a local directory or an s3:// prefix)."""
    if store.is_s3(root):
        return store.get_bytes(store.S3Uri.parse(root).join(rel))
    if store.is_fs(root):
        return store.fs_read(root, rel)
    return (Path(root) / rel).read_bytes()


def _remote_files(root: str, tmp: Path) -> str:
    """Copy the files under an s3:// or DVC root into `tmp` (CIFAR and MNIST-format files: a few
    files of at most a few hundred MB) and return the local root."""
    if store.is_s3(root):
        uri = store.S3Uri.parse(root)
        store.check_bucket(uri, "data.root")
        listing = store.list_objects(uri)
    else:
        listing = store.fs_list(root)
    for key, _ in listing:
        parts = key.split("/")
        if key.endswith("/") or any(p in ("", ".", "..") for p in parts):
            continue
        dest = tmp.joinpath(*parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if store.is_s3(root):
            store.download(store.S3Uri.parse(root).join(key), dest)
        else:
            dest.write_bytes(store.fs_read(root, key))
    return str(tmp)


def load_source(dataset: str, root: str | None = None, download: bool = False) -> RawDataset:
    if dataset == "digits":
        return load_digits()
    if dataset == "imagefolder":
        return load_imagefolder(root or "")
    if (store.is_s3(root) or store.is_fs(root)) and dataset in ("cifar10", "cifar100", *MNIST_FORMAT):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vitnas-data-") as tmp:
            return load_source(dataset, _remote_files(root, Path(tmp)), download=False)  # arrays: read into memory
    if dataset in ("cifar10", "cifar100"):
        return load_cifar(dataset, root or "", download)
    if dataset in MNIST_FORMAT:
        return load_mnist_format(dataset, root, download)
    raise DataError(f"data.dataset: unknown dataset '{dataset}'")
