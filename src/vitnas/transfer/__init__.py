"""Transfer evaluation: CIFAR-format classification fine-tuning, ViTDet-style COCO detection, and
the embedded digits targets (CIFAR and COCO formats, made from real digits) for offline runs."""

from vitnas.transfer.classification import CifarData, fine_tune, read_cifar
from vitnas.transfer.coco import CocoDetection, evaluate_coco, load_coco
from vitnas.transfer.detection import (
    SimpleFeaturePyramid,
    ViTDetBackbone,
    build_detector,
    evaluate_detector,
    predict,
    train_detector,
)
from vitnas.transfer.targets import write_digits_cifar, write_digits_coco

__all__ = [
    "CifarData", "CocoDetection", "SimpleFeaturePyramid", "ViTDetBackbone", "build_detector", "evaluate_coco",
    "evaluate_detector", "fine_tune", "load_coco", "predict", "read_cifar", "train_detector", "write_digits_cifar",
    "write_digits_coco",
]
