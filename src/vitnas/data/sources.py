"""Raw datasets as arrays or file lists, before splitting.

Small datasets (digits, CIFAR) are held as uint8 NHWC arrays; image folders as file paths, so a
large folder is indexed, never copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitnas.data.mnist import NAMES as MNIST_FORMAT
from vitnas.errors import DataError


@dataclass
class RawPart:
    """One predefined part of a dataset (train, or an official test set)."""

    labels: np.ndarray  # int64 [N]
    images: np.ndarray | None = None  # uint8 [N, H, W, C]
    paths: np.ndarray | None = None  # str [N], relative to RawDataset.root

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


def load_imagefolder(root: str) -> RawDataset:
    """A class-per-folder tree; ``root/train`` (+ ``root/test``) when present, else ``root`` itself."""
    from torchvision.datasets import ImageFolder

    base = Path(root)
    if not base.is_dir():
        raise DataError(f"data.root: image folder {base} does not exist")
    train_dir = base / "train" if (base / "train").is_dir() else base
    test_dir = base / "test" if (base / "test").is_dir() else None

    def index(d: Path, classes: list[str] | None = None) -> tuple[list[str], RawPart]:
        try:
            ds = ImageFolder(str(d))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"data.root: {d}: {e}") from None
        if classes is not None and ds.classes != classes:
            raise DataError(f"data.root: {d} has classes {ds.classes}, train has {classes}")
        paths = np.array([str(Path(p).relative_to(base)) for p, _ in ds.samples])
        return ds.classes, RawPart(labels=np.array(ds.targets, dtype=np.int64), paths=paths)

    classes, train = index(train_dir)
    test = index(test_dir, classes)[1] if test_dir else None
    return RawDataset(name="imagefolder", classes=classes, in_chans=3, train=train, test=test,
                      root=str(base.resolve()))


def load_source(dataset: str, root: str | None = None, download: bool = False) -> RawDataset:
    if dataset == "digits":
        return load_digits()
    if dataset in ("cifar10", "cifar100"):
        return load_cifar(dataset, root or "", download)
    if dataset == "imagefolder":
        return load_imagefolder(root or "")
    if dataset in MNIST_FORMAT:
        return load_mnist_format(dataset, root, download)
    raise DataError(f"data.dataset: unknown dataset '{dataset}'")
