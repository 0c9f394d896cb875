"""Opening a stage's inputs, shared by the stages (which never import each other): the prepared
data checked against params, a model from a model directory or an arch.json with supernet weights,
the fixed evaluation and calibration batches. Every file problem is an `ArtifactError`."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from vitnas.config import Params
from vitnas.data import PreparedData
from vitnas.errors import ArtifactError
from vitnas.models.model_dir import ARCH_FILE, WEIGHTS_FILE, load_model
from vitnas.space import Arch, ArchError
from vitnas.supernet import Supernet, SupernetFileError, extract
from vitnas.train import batches

_EVAL_CACHE_BYTES = 512 * 2**20  # val splits below this are kept as one tensor for fast re-evaluation


def check_data(params: Params, data: PreparedData) -> None:
    """The prepared data must be what params.yaml describes (else the space would not fit it)."""
    if data.img_size != params.data.img_size:
        raise ArtifactError(f"{data.path / 'dataset.json'}: img_size {data.img_size} != data.img_size "
                            f"{params.data.img_size} in params; re-run `vitnas data`")


def train_dataset(data: PreparedData, params: Params):
    """The augmented train split as the training stages read it: streamed when
    `data.shuffle_buffer` is set, else by random access."""
    return data.dataset("train", train=True, augment=params.data.augment.model_dump(),
                        shuffle_buffer=params.data.shuffle_buffer)


def reading_fingerprint(params: Params) -> list:
    """The read-time data keys a training checkpoint depends on (a change means a new run)."""
    return [params.data.augment.model_dump(), params.data.shuffle_buffer]


def calibration_images(data: PreparedData, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded set of `n` eval-transformed train images: what recalibrates a GLiT subnet's
    BatchNorm statistics (never val or test images, which rank the subnets)."""
    ds = data.dataset("train", sparse=True)
    idx = sorted(random.Random(repr(("bn-calibration", seed))).sample(range(len(ds)), min(n, len(ds))))
    return torch.stack([ds[i][0] for i in idx])


def eval_batches(data: PreparedData, split: str, batch_size: int, workers: int = 0):
    """A function returning fresh eval batches of `split` (one cached tensor when it is small)."""
    n = data.meta["splits"][split]
    if n * data.in_chans * data.img_size**2 * 4 <= _EVAL_CACHE_BYTES:
        x, y = data.eval_tensors(split)
        return lambda: batches(x, y, batch_size)
    ds = data.dataset(split)
    return lambda: torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)


def check_fits_data(arch: Arch, data: PreparedData, where: Path) -> None:
    want = {"num_classes": data.num_classes, "in_chans": data.in_chans, "img_size": data.img_size}
    for k, v in want.items():
        if getattr(arch, k) != v:
            raise ArtifactError(f"{where}: arch has {k}={getattr(arch, k)} but the data "
                                f"({data.path / 'dataset.json'}) has {k}={v}")


def load_input_model(arch_path: str | Path, supernet_path: str | Path | None,
                     device: torch.device) -> tuple[torch.nn.Module, Arch, str]:
    """(model, arch, source): a model directory's own weights, or the arch's supernet weights."""
    arch_path = Path(arch_path)
    if arch_path.is_dir():
        if not (arch_path / WEIGHTS_FILE).is_file() and (arch_path / ARCH_FILE).is_file():
            raise ArtifactError(f"{arch_path / WEIGHTS_FILE}: not found (a model directory needs "
                                f"{ARCH_FILE} and {WEIGHTS_FILE})")
        model, arch = load_model(arch_path, map_location=device)
        return model, arch, "model"
    if not arch_path.exists():
        raise ArtifactError(f"{arch_path}: architecture file not found")
    try:
        arch = Arch.load(arch_path)
    except ArchError as e:
        raise ArtifactError(str(e)) from None
    if supernet_path is None:
        raise ArtifactError(f"{arch_path}: an arch.json needs the supernet (--supernet) for its weights; "
                            "or give a model directory with arch.json + model.safetensors")
    try:
        supernet = Supernet.load(supernet_path, map_location=device)
    except SupernetFileError as e:
        raise ArtifactError(str(e)) from None
    try:
        supernet.check_arch(arch)
    except ArchError as e:
        raise ArtifactError(f"{arch_path}: {e}") from None
    return extract(supernet, arch).eval(), arch, "supernet"
