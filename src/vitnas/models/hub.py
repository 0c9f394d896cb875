"""timm-native models: the `pretrained_cfg` every built model carries and the `config.json` of
timm's hub layout (the `vitnas_vit` entry of timm's model registry is `timm_entry`).

A model directory is `config.json` + `model.safetensors` (what `timm.create_model("local-dir:DIR",
pretrained=True)` and `hf-hub:` read) plus `arch.json` (what vitnas reads). Uniform archs (one
head count, head dim = embed / heads, one MLP width, timm's LayerNorm eps, no token pruning,
relative position or local units) are written as timm's own `vit_*` VisionTransformer, so plain
timm loads them; every other arch as `vitnas_vit` with the arch as its one model argument.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitnas.space.arch import MODEL_DEFAULTS, Arch

ARCHITECTURE = "vitnas_vit"
CONFIG_FILE = "config.json"
# The registered timm ViT whose constructor builds a uniform arch from model args alone.
TIMM_VIT = "vit_base_patch16_224"
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def pretrained_cfg(arch: Arch, dataset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """timm's pretrained_cfg of `arch`: its input, the data's mean/std (a `dataset.json` mapping:
    `mean`, `std`, `name`, `classes`; without one, ImageNet's, averaged to one channel for grey
    input) and vitnas's eval preprocessing (bilinear resize to the input, no crop margin)."""
    if dataset is not None:
        mean, std = tuple(dataset["mean"]), tuple(dataset["std"])
    elif arch.in_chans == 3:
        mean, std = _IMAGENET
    else:
        mean, std = ((round(sum(v) / 3, 6),) * arch.in_chans for v in _IMAGENET)
    cfg: dict[str, Any] = {
        "input_size": (arch.in_chans, arch.img_size, arch.img_size), "fixed_input_size": True,
        "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center", "mean": mean, "std": std,
        "num_classes": arch.num_classes, "first_conv": "patch_embed.proj", "classifier": "head",
    }
    if dataset is not None and dataset.get("name"):
        cfg["tag"] = str(dataset["name"])  # timm's field for "the data the weights were trained on"
        cfg["description"] = f"vitnas model trained on {dataset['name']}"
    classes = (dataset or {}).get("classes")
    if isinstance(classes, list) and len(classes) == arch.num_classes:
        cfg["label_names"] = [str(c) for c in classes]
    return cfg


def timm_model_args(arch: Arch) -> dict[str, Any] | None:
    """timm `VisionTransformer` kwargs that build `arch` exactly, or None when plain timm cannot."""
    heads, hidden = set(arch.num_heads), set(arch.mlp_hidden)
    plain_vit = arch.family.name == "vit"  # timm's own ViT: no other family's blocks
    if not plain_vit or arch.keep_tokens is not None or arch.rel_pos or len(heads) != 1 or len(hidden) != 1 \
            or arch.norm_eps != MODEL_DEFAULTS["norm_eps"]:
        return None
    (h,), (m,) = heads, hidden
    ratio = m / arch.embed_dim
    if h == 0 or any(d * h != arch.embed_dim for d in arch.head_dim) or int(arch.embed_dim * ratio) != m:
        return None
    return {"img_size": arch.img_size, "patch_size": arch.patch_size, "in_chans": arch.in_chans,
            "num_classes": arch.num_classes, "embed_dim": arch.embed_dim, "depth": arch.depth, "num_heads": h,
            "mlp_ratio": ratio, "qkv_bias": True, "class_token": True, "global_pool": arch.global_pool,
            "fc_norm": False}


def hub_config(arch: Arch, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `config.json` of a model directory (timm's hub format) for `arch` with pretrained_cfg `cfg`."""
    plain = timm_model_args(arch)
    name, args = (TIMM_VIT, plain) if plain is not None else (ARCHITECTURE, {"arch": arch.to_dict()})
    pcfg = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    return {"architecture": name, "num_classes": arch.num_classes, "num_features": arch.embed_dim,
            "global_pool": arch.global_pool, "model_args": args, "pretrained_cfg": pcfg}


def write_config(directory: str | Path, arch: Arch, cfg: Mapping[str, Any]) -> None:
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(hub_config(arch, cfg), indent=2) + "\n")


def attach(model, cfg: Mapping[str, Any]) -> None:
    """Set timm's `pretrained_cfg` (and its alias `default_cfg`) on a built model."""
    model.pretrained_cfg = dict(cfg)
    model.default_cfg = model.pretrained_cfg
