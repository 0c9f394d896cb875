"""Datasets: raw sources, seeded splits, the prepared artifact and its readers."""

from vitnas.data.prepared import SPLITS, PreparedData, write_prepared
from vitnas.data.sources import RawDataset, load_source
from vitnas.data.splits import split_indices

__all__ = ["SPLITS", "PreparedData", "RawDataset", "load_source", "split_indices", "write_prepared"]
