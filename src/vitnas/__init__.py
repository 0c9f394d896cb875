"""vitnas: Vision Transformer architecture search as a reproducible workflow.

The names here are the stable Python API users' scripts rely on.
"""

from vitnas.space import Arch, ArchError, SearchSpace, build, count_flops, count_params

__version__ = "0.1.0"
__all__ = ["Arch", "ArchError", "SearchSpace", "build", "count_flops", "count_params", "__version__"]
