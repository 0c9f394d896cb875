"""vitnas: Vision Transformer architecture search as a reproducible workflow.

The names here are the stable Python API users' scripts rely on. They load on first use, so that
`import vitnas` (and `vitnas --help`) does not pay for torch and timm. Importing vitnas also adds
its `vitnas_vit` architecture to timm's model registry, at once when timm is loaded, else as soon
as it is: `timm.create_model("local-dir:DIR", pretrained=True)` then loads any vitnas model.
"""

from importlib import import_module

from vitnas._timm_registry import install as _install_timm_registration

__version__ = "0.1.0"
_LAZY = {"Arch": "vitnas.space", "ArchError": "vitnas.space", "SearchSpace": "vitnas.space",
         "build": "vitnas.models", "count_flops": "vitnas.space", "count_params": "vitnas.space",
         "Supernet": "vitnas.supernet", "extract": "vitnas.supernet"}
__all__ = [*_LAZY, "__version__"]

_install_timm_registration()


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitnas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
