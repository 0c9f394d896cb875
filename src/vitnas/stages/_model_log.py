"""The MLflow model a stage logs is its model directory: a pt2 program (servable without vitnas) plus
the directory's files (timm's `config.json`, `arch.json`, `model.safetensors`), the preprocessing and
the architecture's genes and exact costs as params. One rule for every stage that writes a model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vitnas.models.hub import CONFIG_FILE
from vitnas.models.model_dir import ARCH_FILE, WEIGHTS_FILE
from vitnas.space import Arch, count_flops, count_params

MODEL_FILES = (CONFIG_FILE, ARCH_FILE, WEIGHTS_FILE)


def arch_params(arch: Arch) -> dict[str, object]:
    """The architecture's genes and exact costs as MLflow params (`arch.*`) of a run and its model."""
    genes = {k: v for k, v in arch.to_dict().items() if v is not None}
    return {f"arch.{k}": v for k, v in genes.items()} | {"arch.params": count_params(arch),
                                                          "arch.flops": count_flops(arch)}


def preprocessing_params(cfg: dict[str, object]) -> dict[str, object]:
    """What a user must feed the model (`data.*`), from a pretrained_cfg."""
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "num_classes", "tag")
    return {f"data.{'dataset' if k == 'tag' else k}": cfg[k] for k in keys if cfg.get(k) is not None}


def model_example(data, arch: Arch) -> torch.Tensor:
    """Two val images (torch.export specialises a batch of 1), zeros when val has fewer."""
    if data.meta["splits"]["val"] >= 2:
        return data.eval_tensors("val")[0][:2]
    return torch.zeros(2, arch.in_chans, arch.img_size, arch.img_size)


def log_model_dir(run_, model: torch.nn.Module, model_dir: Path, arch: Arch, example: torch.Tensor,
                  registered_model: str | None = None) -> str | None:
    """Log `model` (saved in `model_dir`) as the run's MLflow model; returns the registered version."""
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    return run_.log_model(
        model, input_example=example.numpy(), registered_model=registered_model,
        params=arch_params(arch) | preprocessing_params(config["pretrained_cfg"]),
        files=[model_dir / f for f in MODEL_FILES],
        metadata={"pretrained_cfg": config["pretrained_cfg"], "architecture": config["architecture"],
                  "load_with_timm": "timm.create_model('local-dir:<extra_files>', pretrained=True) after "
                                    "import vitnas"})
