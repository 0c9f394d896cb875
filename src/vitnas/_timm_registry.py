"""Register `vitnas_vit` with timm when timm is imported, without importing timm (or torch) here.

`import vitnas` must stay cheap (the CLI's `--help`), yet a user who imports vitnas and then timm
expects `timm.create_model("local-dir:DIR")` to know vitnas models. A one-shot import finder wraps
timm's own loader, so the registration runs right after timm finishes importing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def _register() -> None:
    try:
        from vitnas.models.timm_entry import register

        register()
    except Exception as e:  # never break `import timm` over vitnas's extra registration
        import warnings

        warnings.warn(f"vitnas: could not register vitnas_vit with timm ({type(e).__name__}: {e})", stacklevel=2)


class _AfterTimm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; the lookup below must not find this finder again
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if timm is loaded, else when it is."""
    if "timm" in sys.modules and hasattr(sys.modules["timm"], "create_model"):
        _register()
    elif not any(isinstance(f, _AfterTimm) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimm())
