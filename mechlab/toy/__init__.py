"""Toy models with known circuits, trained on CPU (the attention-only induction model)."""

from mechlab.toy.data import Layout, induction_batch
from mechlab.toy.train import ToyTrainConfig, TrainedToy, TrainStep, train_induction_toy

__all__ = ["Layout", "ToyTrainConfig", "TrainStep", "TrainedToy", "induction_batch", "train_induction_toy"]
