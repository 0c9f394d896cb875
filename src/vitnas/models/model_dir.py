"""A model directory: `config.json` + `model.safetensors` (timm's hub layout, see `vitnas.models.hub`)
plus `arch.json`, what every stage that writes a model writes and what `vitnas.build` models load
from (beside `vitnas.build`, not inside slimming)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from vitnas.errors import ArtifactError
from vitnas.files import read_json
from vitnas.models import hub
from vitnas.models.build import build
from vitnas.models.weights import check_state_fits, safetensors_header
from vitnas.safe_load import torch_load
from vitnas.space.arch import Arch, ArchError

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"


def save_model(model: torch.nn.Module, arch: Arch, directory: str | Path,
               dataset: Mapping[str, Any] | None = None) -> None:
    """Write `arch.json`, `config.json` and `model.safetensors` (the `vitnas.build(arch)` state dict)
    into `directory`. The preprocessing in `config.json` is `dataset`'s (a `dataset.json` mapping)
    when given, else the model's own `pretrained_cfg`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ARCH_FILE).write_text(arch.to_json() + "\n")
    cfg = hub.pretrained_cfg(arch, dataset) if dataset is not None else \
        getattr(model, "pretrained_cfg", None) or hub.pretrained_cfg(arch)
    hub.write_config(directory, arch, cfg)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "vitnas-model/1"})


def load_weights(arch: Arch, path: str | Path, *, map_location: str | torch.device = "cpu",
                 all_tokens: bool = False) -> VisionTransformer:
    """`vitnas.build(arch)` with weights from a `.safetensors` or torch (`.pth`/`.pt`) state dict
    (a `{"model": ...}` / `{"state_dict": ...}` wrapper is unwrapped).

    `all_tokens=True` loads a token-pruned model with every token kept (the weights do not depend
    on the token count): what fine-tuning at another input size or dense prediction needs."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file not found")
    pruned = all_tokens and arch.keep_tokens is not None
    if pruned:
        arch = arch.replace(keep_tokens=None)

    def drop(key: str) -> bool:  # a token-pruned model loaded with every token: no token rows or predictors
        return pruned and (key.endswith(".token_rows") or ".predictor." in key)
    safetensors = path.suffix == ".safetensors"
    if safetensors:  # shapes from the header against the arch, before anything is read or built
        header = safetensors_header(path)
        check_state_fits(arch, {k: v for k, v in header.items() if not drop(k)}, path)
    try:
        if safetensors:
            from safetensors.torch import load_file

            state = load_file(str(path), device=str(map_location))
        else:
            state = torch_load(path, map_location)
            for key in ("model", "state_dict"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
    except Exception as e:  # many types for corrupt or foreign files
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"{path}: unreadable weights ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{path}: not a state dict of tensors")
    state = {k: v for k, v in state.items() if not drop(k)}
    if not safetensors:  # a torch file has no header: its loaded tensors are checked before building
        check_state_fits(arch, {k: (v.dtype, tuple(v.shape)) for k, v in state.items()}, path)
    model = build(arch)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise ArtifactError(f"{path}: weights do not fit the architecture ({(lines or [''])[-1][:200]})") \
            from None
    return model.to(map_location)


def load_model(directory: str | Path, *, map_location: str | torch.device = "cpu",
               all_tokens: bool = False) -> tuple[VisionTransformer, Arch]:
    """The model saved by `save_model` (or any directory with `arch.json` + `model.safetensors`);
    `all_tokens`: see `load_weights` (the returned arch then has no `keep_tokens`)."""
    directory = Path(directory)
    if not (directory / ARCH_FILE).is_file():
        raise ArtifactError(f"{directory / ARCH_FILE}: not found (expected a model directory with "
                            f"{ARCH_FILE} and {WEIGHTS_FILE})")
    try:
        arch = Arch.load(directory / ARCH_FILE)
    except ArchError as e:
        raise ArtifactError(str(e)) from None
    cfg = check_config_agrees(directory, arch)
    model = load_weights(arch, directory / WEIGHTS_FILE, map_location=map_location, all_tokens=all_tokens)
    if cfg is not None:  # the preprocessing the model was trained with (older directories have none)
        hub.attach(model, cfg | {"input_size": tuple(cfg["input_size"])})
    return model, (arch.replace(keep_tokens=None) if all_tokens and arch.keep_tokens else arch)


def _json_normal(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def check_config_agrees(directory: str | Path, arch: Arch) -> dict[str, Any] | None:
    """The saved pretrained_cfg of `directory/config.json` (None when there is none: older
    directories), after checking that the model it describes is `arch`: vitnas (arch.json) and timm
    (config.json) must never build different models from one directory."""
    path = Path(directory) / hub.CONFIG_FILE
    if not path.is_file():
        return None
    config = read_json(path, ArtifactError, "model config", max_bytes=16 * 2**20)
    cfg = config.get("pretrained_cfg") if isinstance(config, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("input_size"), list):
        raise ArtifactError(f"{path}: no pretrained_cfg with an input_size")
    want = _json_normal(hub.hub_config(arch, cfg))
    for key in ("architecture", "num_classes", "model_args"):
        if config.get(key) != want[key]:
            raise ArtifactError(f"{path}: its {key} describes another model than {ARCH_FILE} beside it; vitnas and "
                                "timm would build different models from this directory (rewrite one from the other)")
    if list(cfg["input_size"]) != [arch.in_chans, arch.img_size, arch.img_size]:
        raise ArtifactError(f"{path}: pretrained_cfg input_size {cfg['input_size']} disagrees with {ARCH_FILE} "
                            f"({arch.in_chans}x{arch.img_size}x{arch.img_size})")
    return cfg
