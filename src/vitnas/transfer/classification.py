"""Classification transfer: fine-tune a model on a CIFAR-format dataset and report test top-1.

The model keeps its backbone and gets a new head for the target's classes (timm
`reset_classifier`). Images are brought to the model's input: resized to its input size (or to
`img_size`, the position embedding then resampled by timm's `set_input_size`) and converted to
what the model was trained on: a 1-channel model (the digits demo) sees CIFAR's RGB as grayscale
(ITU-R 601-2 luma, PIL's "L"); a 3-channel model trained on grey images (a grey image folder read
as RGB: `source_is_grey`) sees the grayscale image repeated in its 3 channels; a 3-channel model
trained on colour sees the RGB image as it is. Normalisation uses the target's own train
statistics after that conversion. Training is the timm/DeiT recipe of
`vitnas.train.ClassifierTrainer` (AdamW, warmup + cosine, label smoothing, AMP on CUDA).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Dataset

from vitnas.data.cifar import layout, read_cifar_folder
from vitnas.data.transforms import eval_transform, train_transform
from vitnas.errors import ArtifactError, DataError
from vitnas.train import ClassifierTrainer, DistInfo, batches, epoch_loader, reseed

CIFAR_FORMATS = ("cifar10", "cifar100")


@dataclass
class CifarData:
    """A CIFAR-format dataset in memory: uint8 RGB images [N, 32, 32, 3] and int labels."""

    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_cifar(root: str | Path, fmt: str = "cifar10") -> CifarData:
    """CIFAR-10/100 in the python on-disk format under `root` (`cifar-10-batches-py/`,
    `cifar-100-python/`), read by vitnas's restricted unpickler (no code in a file can run)."""
    if fmt not in CIFAR_FORMATS:
        raise ValueError(f"fmt must be one of {CIFAR_FORMATS}, got {fmt!r}")
    if not Path(root).is_dir():
        raise ArtifactError(f"{root}: transfer dataset directory not found")
    try:
        c = read_cifar_folder(root, fmt)
    except DataError as e:
        raise ArtifactError(str(e)) from None
    data = CifarData(classes=c.classes, train_images=c.train_images, train_labels=c.train_labels,
                     test_images=c.test_images, test_labels=c.test_labels)
    if not len(data.train_images) or not len(data.test_images):
        raise ArtifactError(f"{Path(root) / layout(fmt).base_folder}: the train or test part is empty")
    return data


def source_is_grey(model) -> bool:
    """Whether `model` was trained on grey images: one channel, or three whose training statistics
    (`pretrained_cfg` mean and std, which vitnas writes from the data) are equal, as a grey image
    folder read as RGB gives. Colour data has unequal channel statistics (ImageNet's mean is
    0.485/0.456/0.406)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = list(cfg.get("mean") or ()), list(cfg.get("std") or ())
    if len(mean) == 1:
        return True
    return len(mean) == 3 and len(std) == 3 and max(mean) - min(mean) < 1e-6 and max(std) - min(std) < 1e-6


def to_mode(image: np.ndarray, in_chans: int, grey: bool = False) -> Image.Image:
    """An RGB uint8 array as the PIL image a model with `in_chans` channels reads (`grey`: a
    3-channel model trained on grey images, which gets the grayscale image in every channel)."""
    im = Image.fromarray(image)
    if in_chans == 1:
        return im.convert("L")
    return im.convert("L").convert("RGB") if grey else im


def channel_stats(images: np.ndarray, in_chans: int, grey: bool = False) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of RGB uint8 images as the model will see them (`to_mode`)."""
    x = images.astype(np.float64)
    if in_chans == 1 or grey:  # PIL's "L" conversion, without making N PIL images
        x = (x @ np.array([299, 587, 114]) / 1000.0)[..., None]
    x = x.reshape(-1, 1 if grey else in_chans) / 255.0
    mean, std = [float(v) for v in x.mean(0)], [float(v) + 1e-6 for v in x.std(0)]
    return (mean * in_chans, std * in_chans) if grey else (mean, std)


class ImageArrayDataset(Dataset):
    """(transformed image, label) over uint8 RGB arrays, converted to the model's channels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, in_chans: int, transform, grey: bool = False) -> None:
        self.images, self.labels, self.in_chans, self.transform = images, labels, in_chans, transform
        self.grey = grey

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(to_mode(self.images[i], self.in_chans, self.grey)), int(self.labels[i])


def prepare_model(model: VisionTransformer, num_classes: int, img_size: int | None = None) -> VisionTransformer:
    """A new linear head for `num_classes` (the old one knows other classes) and, if asked, another
    input size (position embedding resampled by timm)."""
    model.reset_classifier(num_classes)
    if img_size is not None and tuple(model.patch_embed.img_size) != (img_size, img_size):
        patch = model.patch_embed.patch_size[0]
        if img_size % patch:
            raise ValueError(f"img_size {img_size} is not a multiple of the model's patch size {patch}")
        model.set_input_size(img_size=(img_size, img_size))
    return model


def fine_tune(model: VisionTransformer, data: CifarData, *, epochs: int, batch_size: int, lr: float,
              min_lr: float = 1e-6, weight_decay: float = 0.05, warmup_epochs: int = 1,
              label_smoothing: float = 0.1, hflip: float = 0.0, img_size: int | None = None, seed: int = 0,
              device: torch.device | str = "cpu", progress: bool = True, grey: bool | None = None,
              on_epoch: Callable[[int, dict], None] | None = None) -> dict[str, float]:
    """Fine-tune `model` on `data.train_*`, report top-1 on `data.test_*`: {top1, test_loss,
    train_loss, train_seconds}. `hflip`: 0.5 for natural images, 0 for digits (not mirror-symmetric).
    `grey`: a 3-channel model sees grey images repeated (None: when it was trained on grey ones)."""
    device = torch.device(device)
    in_chans = model.patch_embed.proj.in_channels
    grey = (source_is_grey(model) if grey is None else grey) and in_chans == 3
    reseed(seed, "transfer-init")
    model = prepare_model(model, data.num_classes, img_size)
    size = model.patch_embed.img_size[0]
    mean, std = channel_stats(data.train_images, in_chans, grey)
    augment = {"scale": (0.75, 1.0), "ratio": (0.9, 1.1), "hflip": hflip, "color_jitter": 0.0,
               "interpolation": "bilinear"}
    train_ds = ImageArrayDataset(data.train_images, data.train_labels, in_chans,
                                 train_transform(size, in_chans, mean, std, augment), grey)
    test_tf = eval_transform(size, in_chans, mean, std)
    xt = torch.stack([test_tf(to_mode(a, in_chans, grey)) for a in data.test_images])
    yt = torch.as_tensor(data.test_labels, dtype=torch.long)
    bs = min(batch_size, len(train_ds))
    steps = len(train_ds) // bs
    trainer = ClassifierTrainer(model, num_classes=data.num_classes, epochs=epochs, steps_per_epoch=steps, lr=lr,
                                min_lr=min_lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                                label_smoothing=label_smoothing, dist=DistInfo(device=device), name="transfer")
    t0 = time.time()
    stats: dict[str, float] = {}
    for epoch in range(epochs):
        reseed(seed, "transfer", epoch)
        loader = epoch_loader(train_ds, batch_size=bs, seed=seed, epoch=epoch, pin_memory=device.type == "cuda")
        stats = trainer.train_epoch(loader, epoch, progress)
        if on_epoch is not None:
            on_epoch(epoch, stats)
    train_seconds = time.time() - t0
    result = trainer.evaluate(batches(xt, yt, 256))
    return {"top1": result["acc"], "test_loss": result["loss"], "train_loss": stats.get("train_loss", float("nan")),
            "train_seconds": train_seconds}
