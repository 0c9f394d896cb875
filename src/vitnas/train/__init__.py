"""Training building blocks shared by supernet training, slimming and retraining."""

from vitnas.train.classifier import ClassifierTrainer, distill_loss
from vitnas.train.distributed import (
    DistInfo,
    average_gradients,
    broadcast,
    gather_map,
    init_distributed,
    replicas_in_sync,
)
from vitnas.train.loop import LossNotFinite, batches, epoch_loader, evaluate, reseed, steps_per_epoch
from vitnas.train.recipe import Precision, make_loss, make_mixup, make_optimizer, make_scheduler

__all__ = [
    "ClassifierTrainer", "DistInfo", "LossNotFinite", "Precision", "average_gradients", "batches", "distill_loss",
    "epoch_loader", "evaluate", "init_distributed", "make_loss", "make_mixup", "make_optimizer", "make_scheduler",
    "replicas_in_sync", "reseed", "steps_per_epoch", "broadcast", "gather_map",
]
