"""Standalone models of an `Arch`: the timm VisionTransformer built from it (`build`), relative
position tables, timm's hub metadata and registry entry, model directories (config.json +
model.safetensors + arch.json) and the checks of a weights file against an arch.

`vitnas.space` holds architectures, spaces and their exact costs; this package turns them into modules.
"""

from vitnas.models.build import build

__all__ = ["build"]
