"""AutoFormer weight-entangled supernet (plain ViT or GLiT global-local blocks): train once, inherit
weights for any arch of a space."""

from vitnas.supernet.extract import arch_views, extract, timm_views
from vitnas.supernet.file_format import FORMAT, SupernetFileError
from vitnas.supernet.glit import batchnorms, recalibrate_bn
from vitnas.supernet.model import Supernet, arch_mismatch
from vitnas.supernet.pretrained import TimmInit, init_from_timm

__all__ = ["FORMAT", "Supernet", "SupernetFileError", "TimmInit", "arch_mismatch", "arch_views", "batchnorms",
           "extract", "init_from_timm", "recalibrate_bn", "timm_views"]
