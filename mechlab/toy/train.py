"""Train a toy model with a known circuit: the attention-only 2-layer induction model, on CPU.

``train_induction_toy(ToyTrainConfig())`` trains ``toy:attn-only-2l`` on repeated random tokens
(``mechlab.toy.data``). With the random layout it learns the textbook circuit (Olsson et al. 2022):
a layer-0 previous-token head writes "the token before me was A" into each position, and layer-1
induction heads use it as a key (K-composition) to find the token after the earlier A and copy it.
Zero-ablating the previous-token head destroys the induction heads' attention.

Weight decay matters: without it two or three layer-0 heads share the previous-token job, and
ablating one leaves the others. With ``weight_decay=0.3`` one head takes it over within ~1000
steps (about a minute on 2 cores). The loss plateaus near ln(63) until the circuit forms, then drops
abruptly (the "induction bump").

Training is deterministic: the model's initialisation, the data and the optimizer are all seeded
from ``config.seed``. Nothing is printed; pass ``progress`` to observe it.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F

from mechlab.files import atomic_write
from mechlab.progress import Progress
from mechlab.toy import model as toy_models
from mechlab.toy.data import Layout, induction_batch

TRAINING_FILE = "training.json"


@dataclasses.dataclass(frozen=True)
class ToyTrainConfig:
    """How to train an induction toy model.

    Attributes:
        model: a toy spec as in ``toy:SPEC`` (preset plus ``key=value`` overrides).
        layout: ``"random"`` (the real task) or ``"fixed"`` (the positional negative control).
        steps: optimizer steps.
        batch_size: sequences per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (see the module docstring).
        min_repeat: shortest repeated stretch (random layout).
        seed: seeds the initialisation and the data.
    """

    model: str = "attn-only-2l"
    layout: Layout = "random"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.3
    min_repeat: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layout not in get_args(Layout):
            raise ValueError(f"layout must be one of {get_args(Layout)}; got {self.layout!r}.")
        for name in ("steps", "batch_size", "min_repeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}.")
        self.model_config()  # the spec parses and min_repeat fits twice in its context

    def model_config(self) -> dict[str, Any]:
        """The toy model's config dict (the spec with this config's seed)."""
        config = toy_models.parse_spec(self.model)
        config["seed"] = self.seed
        if 2 * self.min_repeat + 1 > config["n_ctx"]:
            raise ValueError(
                f"min_repeat={self.min_repeat} does not fit twice in n_ctx={config['n_ctx']} after BOS."
            )
        return config


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """Progress record: the step reached (of ``total``), the loss on the repeated part, seconds since
    the start. A ``mechlab.progress.ProgressState`` (``done`` is ``step``)."""

    step: int
    loss: float
    seconds: float
    total: int | None = None

    @property
    def done(self) -> int:
        return self.step


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedToy:
    """A trained toy model, its model config, the training config and the loss history."""

    model: Any
    model_config: dict[str, Any]
    config: ToyTrainConfig
    history: list[TrainStep]
    seconds: float

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss

    def save(self, directory: Path | str) -> Path:
        """Write the checkpoint (``toy:DIR`` loads it) and ``training.json`` (config + history)."""
        directory = Path(directory)
        toy_models.save_toy(self.model, self.model_config, directory)
        record = {
            "config": dataclasses.asdict(self.config),
            "seconds": self.seconds,
            "history": [dataclasses.asdict(step) for step in self.history],
        }
        atomic_write(directory / TRAINING_FILE, json.dumps(record, indent=1))
        return directory


def train_induction_toy(
    config: ToyTrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    log_every: int = 25,
    cpu_threads: int | None = 1,
) -> TrainedToy:
    """Train a toy model on repeated random tokens; returns it ready for ``run_detectors``.

    Args:
        config: what to train (default ``ToyTrainConfig()``).
        device: where to train.
        progress: called with a ``TrainStep`` every ``log_every`` steps and after the last.
        log_every: steps between history records.
        cpu_threads: torch CPU threads while training (restored afterwards); ``None`` keeps the
            current setting. The model's matrices are too small to gain from more threads, and on a
            shared CPU extra threads spin-wait: one thread trained 12 steps/s where two managed 1.4
            beside other jobs.

    Returns:
        A ``TrainedToy``; ``.save(DIR)`` writes a checkpoint ``load_model("toy:DIR")`` reads.
    """
    config = ToyTrainConfig() if config is None else config
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive number of steps; got {log_every!r}.")
    if cpu_threads is not None and (isinstance(cpu_threads, bool) or cpu_threads < 1):
        raise ValueError(
            f"cpu_threads must be a positive integer or None (keep torch's); got {cpu_threads!r}."
        )
    previous_threads = torch.get_num_threads()
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        return _train(config, device=device, progress=progress, log_every=log_every)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    config: ToyTrainConfig,
    *,
    device: str | torch.device,
    progress: Progress | None,
    log_every: int,
) -> TrainedToy:
    model_config = config.model_config()
    model = toy_models.build(model_config, device=device, dtype=torch.float32)
    model.enable_compatibility_mode(no_processing=True)
    network = model.original_model  # the bare network: same parameters, no hook overhead
    network.train()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[TrainStep] = []
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        tokens, mask = induction_batch(
            config.batch_size,
            seq_len=model_config["n_ctx"],
            d_vocab=model_config["d_vocab"],
            layout=config.layout,
            min_repeat=config.min_repeat,
            generator=generator,
        )
        tokens, mask = tokens.to(device), mask.to(device)
        logits = network(tokens)
        loss = F.cross_entropy(logits[:, :-1][mask], tokens[:, 1:][mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == config.steps:
            record = TrainStep(
                step, float(loss.detach()), round(time.perf_counter() - start, 3), config.steps
            )
            history.append(record)
            if progress is not None:
                progress(record)
    network.eval()
    return TrainedToy(model.eval(), model_config, config, history, round(time.perf_counter() - start, 3))
