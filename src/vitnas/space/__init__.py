"""Architectures, search spaces, their exact costs and standalone models."""

from vitnas.space.arch import Arch, ArchError
from vitnas.space.build import build
from vitnas.space.cost import count_flops, count_params
from vitnas.space.search_space import SearchSpace

__all__ = ["Arch", "ArchError", "SearchSpace", "build", "count_flops", "count_params"]
