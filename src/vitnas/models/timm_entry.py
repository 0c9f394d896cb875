"""The `vitnas_vit` entry of timm's model registry: `timm.create_model("vitnas_vit", arch={...})`
and `timm.create_model("local-dir:DIR", pretrained=True)` for any vitnas model directory, with the
same checks as `vitnas validate` before anything is built.

Apart from `hub` (metadata only) so that building a model never imports the registry entry that
builds models.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitnas.models.hub import ARCHITECTURE, CONFIG_FILE, pretrained_cfg
from vitnas.space.arch import Arch, ArchError


def _from_arch(arch: Mapping[str, Any], *, img_size: int | None = None, in_chans: int | None = None,
               num_classes: int | None = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0, **_ignored):
    """The model for timm's `build_model_with_cfg`: `arch` with timm's requested input and classes."""
    from vitnas.models.build import build
    from vitnas.space.memory import check_fits

    a = Arch.from_dict(arch)
    if isinstance(img_size, (list, tuple)):  # timm passes (H, W)
        if len(set(img_size)) != 1:
            raise ArchError(f"img_size: vitnas models take square input, got {list(img_size)}")
        img_size = img_size[0]
    changes = {k: v for k, v in (("img_size", img_size), ("in_chans", in_chans), ("num_classes", num_classes))
               if v is not None and v != getattr(a, k)}
    if "img_size" in changes and (a.keep_tokens is not None or a.rel_pos):
        raise ArchError(f"img_size: this arch (token pruning or relative position) is fixed to {a.img_size} px")
    if changes:
        a = a.replace(**changes)
    check_fits(a, "the model")
    return build(a, drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def vitnas_vit(pretrained: bool = False, *, arch: Mapping[str, Any] | None = None, **kwargs):
    """A vitnas architecture (any arch.json, including GLiT, token-pruned and relative-position archs)
    as a timm model: `timm.create_model("local-dir:DIR", pretrained=True)`, or
    `timm.create_model("vitnas_vit", arch={...})` for a new one."""
    from timm.models import build_model_with_cfg

    if arch is None:
        raise ArchError("vitnas_vit: pass arch={...} (an arch.json) or load a model directory with local-dir:DIR")
    a = Arch.from_dict(arch)
    cfg = kwargs.pop("pretrained_cfg", None) or pretrained_cfg(a)
    if pretrained:
        _check_local_dir(a, cfg)
    return build_model_with_cfg(_from_arch, ARCHITECTURE, pretrained, pretrained_cfg=cfg, arch=a.to_dict(),
                                **kwargs)


def _check_local_dir(arch: Arch, cfg: Any) -> None:
    """timm's `local-dir:DIR` loads DIR's weights into the model it builds: first the same checks as
    `vitnas validate` (memory, arch.json agreeing with config.json, the weights' header against the
    arch), so a file describing a huge model is refused before anything is built."""
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
    if get("source") != "local-dir" or not get("file"):
        return
    from vitnas.models.model_dir import ARCH_FILE, WEIGHTS_FILE, check_config_agrees
    from vitnas.models.weights import check_safetensors_fit
    from vitnas.space.memory import check_fits

    directory = Path(get("file"))
    check_fits(arch, f"{directory / CONFIG_FILE}: the model")
    if (directory / ARCH_FILE).is_file():  # config.json (what timm builds) must describe arch.json's model
        check_config_agrees(directory, Arch.load(directory / ARCH_FILE))
    if (directory / WEIGHTS_FILE).is_file():
        check_safetensors_fit(arch, directory / WEIGHTS_FILE)


def register() -> None:
    """Add `vitnas_vit` to timm's model registry (idempotent)."""
    from timm.models import is_model, register_model

    if not is_model(ARCHITECTURE):
        register_model(vitnas_vit)
