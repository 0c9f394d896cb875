"""vitnas: Vision Transformer architecture search as a reproducible workflow.

The names here are the stable Python API users' scripts rely on.
"""

from vitnas.space import Arch, ArchError, SearchSpace, build, count_flops, count_params
from vitnas.supernet import Supernet, extract

__version__ = "0.1.0"
__all__ = ["Arch", "ArchError", "SearchSpace", "Supernet", "build", "count_flops", "count_params", "extract",
           "__version__"]
