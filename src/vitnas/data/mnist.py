"""MNIST, Fashion-MNIST and KMNIST from their original idx files, read without torchvision's loader.

The four files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte`, each optionally `.gz`) are looked for in `root` itself (flat, as Debian's
`dataset-fashion-mnist` installs them under /usr/share/datasets/fashion-mnist) and in torchvision's
layout `root/<MNIST|FashionMNIST|KMNIST>/raw`. The idx header is checked against the file's length
before anything is allocated, so a truncated or planted file gives one error line, not a huge read.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from vitnas.errors import DataError

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
NAMES = tuple(TORCHVISION_FOLDER)  # the MNIST-format datasets
CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}
DEBIAN_ROOT = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}  # apt-get install dataset-fashion-mnist


def default_root(name: str) -> str | None:
    """Where `name` is when `data.root` is not given: Debian's install location, if it is there."""
    root = DEBIAN_ROOT.get(name)
    return root if root is not None and Path(root).is_dir() else None
MAX_ITEMS = 10_000_000  # far above any MNIST-format set; a header asking for more is refused
_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned byte data, 1 or 3 dimensions


def _file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_folder(name: str, root: str | Path) -> Path:
    """The folder holding all four idx files of dataset `name` under `root` (flat or torchvision's)."""
    root = Path(root)
    candidates = [root, root / TORCHVISION_FOLDER[name] / "raw", root / TORCHVISION_FOLDER[name]]
    stems = [s for pair in FILES.values() for s in pair]
    for folder in candidates:
        if all(_file(folder, s) for s in stems):
            return folder
    if not root.is_dir():
        raise DataError(f"data.root: {root} does not exist ({name} needs its four idx files there"
                        + (f"; on Debian: apt-get install dataset-{name}, root {DEBIAN_ROOT[name]}"
                           if name in DEBIAN_ROOT else "") + ")")
    best = max(candidates, key=lambda f: sum(_file(f, s) is not None for s in stems))
    missing = next(s for s in stems if _file(best, s) is None)
    raise DataError(f"data.root: {best / missing}[.gz] not found ({name} needs {', '.join(stems)}, gzipped or not, "
                    f"in {root} or {root / TORCHVISION_FOLDER[name] / 'raw'}; set data.download: true when online)")


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An idx file of unsigned bytes with `dims` dimensions, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4 + 4 * dims)
            if len(head) < 4 + 4 * dims or int.from_bytes(head[:4], "big") != _MAGIC[dims]:
                raise DataError(f"data.root: {path}: not an idx{dims}-ubyte file (bad header)")
            shape = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
            if shape[0] > MAX_ITEMS or any(s <= 0 for s in shape) or (dims == 3 and max(shape[1:]) > 4096):
                raise DataError(f"data.root: {path}: implausible shape {shape} in its header")
            size = int(np.prod(shape))
            data = f.read(size)
            if len(data) != size or f.read(1):
                raise DataError(f"data.root: {path}: its header says {size:,} bytes of data, the file "
                                f"{'has fewer' if len(data) != size else 'has more'}")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"data.root: {path}: unreadable ({type(e).__name__}: {str(e)[:100]})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_split(folder: Path, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, 1], labels int64 [N]) of `split` ("train" or "test")."""
    img_stem, lbl_stem = FILES[split]
    img_path, lbl_path = _file(folder, img_stem), _file(folder, lbl_stem)
    images, labels = read_idx(img_path, 3), read_idx(lbl_path, 1)
    if len(images) != len(labels):
        raise DataError(f"data.root: {img_path} has {len(images):,} images, {lbl_path} {len(labels):,} labels")
    if labels.max(initial=0) >= num_classes:
        raise DataError(f"data.root: {lbl_path}: label {int(labels.max())} is not one of the {num_classes} classes")
    return images[..., None], labels.astype(np.int64)


def download(name: str, root: str | Path) -> None:
    """Fetch the four files into torchvision's layout under `root` (needs internet). torchvision
    downloads all four for either split; asking for the test split makes it read back only that one."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST, "kmnist": datasets.KMNIST}[name]
    cls(str(root), train=False, download=True)
