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


def layout(fmt: str):
    """torchvision's description of the format (folder, batch and meta file names, meta key, archive
    URL and MD5): only its pickle reader is replaced here."""
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[fmt]


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


def _part(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        d = read_pickle(path)
        labels_key = "labels" if "labels" in d else "fine_labels"  # CIFAR-10 / CIFAR-100, as torchvision
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
    lay = layout(fmt)
    folder = Path(root) / lay.base_folder
    train_files, test_files = [f for f, _ in lay.train_list], [f for f, _ in lay.test_list]
    meta_file, names_key = lay.meta["filename"], lay.meta["key"]
    missing = [f for f in (*train_files, *test_files, meta_file) if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder}: not a {fmt} copy in the python format (missing {', '.join(missing)})")
    meta = read_pickle(folder / meta_file)
    names = meta.get(names_key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{folder / meta_file}: '{names_key}' is not a list of class names")
    classes = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    train = _part(folder, train_files)
    test = _part(folder, test_files)
    for part, (_, labels) in (("train", train), ("test", test)):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{folder}: {part} labels outside 0..{len(classes) - 1}")
    return Cifar(classes, train[0], train[1], test[0], test[1])


def download_cifar(root: str | Path, fmt: str) -> None:
    """Fetch and unpack the official archive (its MD5 is checked) when the folder is not there."""
    lay = layout(fmt)
    if (Path(root) / lay.base_folder).is_dir():
        return
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(lay.url, str(root), filename=lay.filename, md5=lay.tgz_md5)
