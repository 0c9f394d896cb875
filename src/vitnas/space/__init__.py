"""Architectures, search spaces and their exact costs (the models built from them: `vitnas.models`)."""

from vitnas.space.arch import Arch, ArchError
from vitnas.space.cost import count_flops, count_params
from vitnas.space.search_space import SearchSpace

__all__ = ["Arch", "ArchError", "SearchSpace", "count_flops", "count_params"]


def __getattr__(name: str):
    if name == "build":  # moved to vitnas.models; scripts that import it from here keep working
        from vitnas.models import build

        return build
    raise AttributeError(f"module 'vitnas.space' has no attribute {name!r}")
