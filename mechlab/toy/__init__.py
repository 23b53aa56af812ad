"""Toy models: small TransformerLens-native models (``model``, loaded by the ``toy:`` source in
``source``), and toys with known circuits trained on CPU (the attention-only induction model)."""

from mechlab.toy.cache import cached_induction_toy, toy_cache_dir
from mechlab.toy.data import Layout, induction_batch
from mechlab.toy.train import ToyTrainConfig, TrainedToy, TrainStep, train_induction_toy

__all__ = [
    "Layout",
    "ToyTrainConfig",
    "TrainStep",
    "TrainedToy",
    "cached_induction_toy",
    "induction_batch",
    "toy_cache_dir",
    "train_induction_toy",
]
