"""AutoFormer weight-entangled supernet: train once, inherit weights for any arch of a space."""

from vitnas.supernet.extract import extract, timm_views
from vitnas.supernet.model import FORMAT, Supernet, SupernetFileError, arch_mismatch
from vitnas.supernet.pretrained import TimmInit, init_from_timm

__all__ = ["FORMAT", "Supernet", "SupernetFileError", "TimmInit", "arch_mismatch", "extract",
           "init_from_timm", "timm_views"]
