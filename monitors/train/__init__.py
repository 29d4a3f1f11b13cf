"""TopK SAE training math: the trainable SAE with AuxK, the trainer, metrics, batching.

Pure torch, no model or file I/O (that is ``latentguard.lab.training``).
"""

from latentguard.monitors.train.config import TrainerConfig
from latentguard.monitors.train.data import shuffled_batches
from latentguard.monitors.train.metrics import (
    ReconstructionMetrics,
    ReconstructionStats,
    fraction_of_variance_unexplained,
)
from latentguard.monitors.train.topk import ForwardOutput, TopKTrainee, auxk_loss
from latentguard.monitors.train.trainer import SAETrainer, StepStats

__all__ = [
    "ForwardOutput",
    "ReconstructionMetrics",
    "ReconstructionStats",
    "SAETrainer",
    "StepStats",
    "TopKTrainee",
    "TrainerConfig",
    "auxk_loss",
    "fraction_of_variance_unexplained",
    "shuffled_batches",
]
