"""Trained toy models kept in mechlab's cache: train once, load afterwards.

``cached_induction_toy(config)`` returns the model ``train_induction_toy(config)`` would train. The
first call trains it and writes the checkpoint to ``<cache>/toys/<key>/`` (``<cache>`` as for
converted models: ``$MECHLAB_CACHE_DIR``, else ``~/.cache/mechlab``); later calls load it in well
under a second. The key is a hash of everything the trained weights depend on: the training and
toy-model code (``mechlab/toy/*.py`` but the source module and the big-GGUF generator), the config,
and the torch version.
Editing any of them trains afresh. The entry is written to a temporary sibling and renamed into
place, so an interrupted run leaves no entry and two concurrent runs both end with a complete one.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from mechlab.files import atomic_dir_sibling
from mechlab.models.cache import cache_dir
from mechlab.toy import model as toy_models
from mechlab.toy.train import TRAINING_FILE, ToyTrainConfig, TrainedToy, TrainStep, train_induction_toy

_PACKAGE = Path(__file__).resolve().parent
# The code a trained toy's weights depend on (the data, the trainer, the model builder).
_SOURCES = tuple(
    path for path in sorted(_PACKAGE.glob("*.py")) if path.name not in ("source.py", "big_gguf.py")
)


def toy_cache_key(config: ToyTrainConfig) -> str:
    """The hex key of ``config``'s entry: sha256 of the code, the config and the torch version."""
    digest = hashlib.sha256()
    for path in _SOURCES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:24]


def toy_cache_dir(config: ToyTrainConfig) -> Path:
    """Where ``cached_induction_toy(config)`` keeps its checkpoint (``toy:DIR`` loads it)."""
    return cache_dir() / "toys" / toy_cache_key(config)


def cached_induction_toy(config: ToyTrainConfig | None = None) -> TrainedToy:
    """``train_induction_toy(config)`` on CPU, trained at most once per cache key.

    Args:
        config: what to train (default ``ToyTrainConfig()``).

    Returns:
        A ``TrainedToy`` whose ``history`` and ``seconds`` are those of the original training.
    """
    config = ToyTrainConfig() if config is None else config
    directory = toy_cache_dir(config)
    if not (directory / TRAINING_FILE).is_file():
        trained = train_induction_toy(config)
        with atomic_dir_sibling(directory) as tmp:
            trained.save(tmp)
        return trained
    return _load(directory, config)


def _load(directory: Path, config: ToyTrainConfig) -> TrainedToy:
    model, model_config = toy_models.load_checkpoint(directory, device="cpu", dtype=torch.float32)
    model.enable_compatibility_mode(no_processing=True)
    record = json.loads((directory / TRAINING_FILE).read_text())
    history = [TrainStep(**step) for step in record["history"]]
    return TrainedToy(model.eval(), model_config, config, history, float(record["seconds"]))
