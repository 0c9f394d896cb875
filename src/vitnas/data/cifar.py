"""CIFAR-10/100 in the python format (the `cifar-10-batches-py/` / `cifar-100-python/` folders),
read without running any code from the files.

The batches are pickles. torchvision reads them with `pickle.load`, which runs whatever a planted
file asks for; this reader admits only what the format holds (dicts, lists, strings, bytes,
numbers and numpy arrays, as written by Python 2 or 3) and fails with one line naming the file on
anything else.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitnas.errors import DataError


@dataclass(frozen=True)
class Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    names_key: str
    labels_key: str
    url: str
    archive: str
    md5: str


LAYOUTS = {
    "cifar10": Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                      "batches.meta", "label_names", "labels", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": Layout("cifar-100-python", ("train",), ("test",), "meta", "fine_label_names", "fine_labels",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85"),
}

# The only callables a CIFAR pickle may name: numpy's array and dtype reconstruction, and the
# bytes encoding Python 3 uses for protocol-2 pickles.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _key(k):
    return k.decode("latin1") if isinstance(k, bytes) else k


def read_pickle(path: Path) -> dict:
    """One CIFAR batch or meta file as a dict with str keys; `DataError` naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on a foreign or corrupt file
        raise DataError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(obj).__name__}, expected a dict)")
    return {_key(k): v for k, v in obj.items()}


def _part(folder: Path, files: tuple[str, ...], labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        d = read_pickle(path)
        data, lab = d.get("data"), d.get(labels_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: 'data' is not a uint8 [N, 3072] array")
        if not isinstance(lab, (list, np.ndarray)) or len(lab) != len(data):
            raise DataError(f"{path}: '{labels_key}' is not a list of {len(data)} labels")
        try:
            lab = np.asarray(lab, dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{path}: '{labels_key}' holds non-integer labels") from None
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


@dataclass
class Cifar:
    classes: list[str]
    train_images: np.ndarray  # uint8 [N, 32, 32, 3]
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray
    test_labels: np.ndarray


def read_cifar_folder(root: str | Path, fmt: str) -> Cifar:
    """The train and test parts and class names of the copy under `root` (missing files, foreign
    pickles, bad shapes and out-of-range labels are `DataError`s naming the file)."""
    lay = LAYOUTS[fmt]
    folder = Path(root) / lay.folder
    missing = [f for f in (*lay.train, *lay.test, lay.meta) if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder}: not a {fmt} copy in the python format (missing {', '.join(missing)})")
    meta = read_pickle(folder / lay.meta)
    names = meta.get(lay.names_key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{folder / lay.meta}: '{lay.names_key}' is not a list of class names")
    classes = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    train = _part(folder, lay.train, lay.labels_key)
    test = _part(folder, lay.test, lay.labels_key)
    for part, (_, labels) in (("train", train), ("test", test)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{folder}: {part} labels outside 0..{len(classes) - 1}")
    return Cifar(classes, train[0], train[1], test[0], test[1])


def download_cifar(root: str | Path, fmt: str) -> None:
    """Fetch and unpack the official archive (its MD5 is checked) when the folder is not there."""
    lay = LAYOUTS[fmt]
    if (Path(root) / lay.folder).is_dir():
        return
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(lay.url, str(root), filename=lay.archive, md5=lay.md5)
