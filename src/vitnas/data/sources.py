"""Raw datasets as arrays or file lists, before splitting.

Small datasets (digits, CIFAR) are held as uint8 NHWC arrays; image folders as file paths, so a
large folder is indexed, never copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def _cifar_class(name: str):
    """torchvision's CIFAR reader, checking that the batch files exist rather than their MD5s.

    The MD5s guard torchvision's own download (the archive's MD5 still does); a copy brought over
    by the user, or re-packed, is read by the same torchvision parser, which fails loudly on a
    malformed file. `check_integrity(path, None)` is torchvision's existence check.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if name == "cifar10" else CIFAR100
    return type(base.__name__, (base,), {
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def load_cifar(name: str, root: str, download: bool = False) -> RawDataset:
    """CIFAR-10/100 in torchvision's on-disk format (``cifar-10-batches-py/`` under `root`)."""
    cls = _cifar_class(name)
    folder = Path(root) / cls.base_folder
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError:
        hint = "set data.download: true on a machine with internet access" if not download else \
            "the download did not produce a valid copy"
        raise DataError(f"data.root: {name} not found or corrupt at {folder} ({hint})") from None
    except Exception as e:  # unpickling errors, truncated files, network errors
        raise DataError(f"data.root: cannot read {name} at {folder}: {type(e).__name__}: {e}") from None
    return RawDataset(
        name=name, classes=list(train.classes), in_chans=3,
        train=RawPart(labels=np.asarray(train.targets, dtype=np.int64), images=np.asarray(train.data)),
        test=RawPart(labels=np.asarray(test.targets, dtype=np.int64), images=np.asarray(test.data)),
    )


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
    raise DataError(f"data.dataset: unknown dataset '{dataset}'")
