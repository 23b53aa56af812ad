"""How an SAE or transcoder is trained: ``TrainConfig`` (architecture, width, budget, optimizer),
``TrainProgress`` (what a running training reports) and the learning-rate schedule (``lr_factor``).
The algorithm is ``mechlab.dictionaries.train``'s.
"""

import dataclasses
from typing import Any

from mechlab.dictionaries.config import ARCHITECTURES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: architecture, width, budget and optimizer settings.

    Args:
        architecture: ``"topk"``, ``"jumprelu"`` or ``"relu"``.
        d_sae: number of latents.
        k: latents per token (TopK).
        n_tokens: training rows (tokens) in all.
        batch_size: rows per step.
        lr: peak learning rate (Adam, betas 0.9/0.999).
        warmup_fraction, decay_fraction: share of steps for linear warm-up / final linear decay.
        l1_coefficient: ReLU's L1 weight. l0_coefficient: JumpReLU's L0 weight.
        bandwidth: JumpReLU's straight-through kernel width. init_threshold: its initial threshold.
        aux_k: dead latents used by AuxK (default ``d_in // 2``). aux_coefficient: AuxK's weight.
        dead_after_tokens: a latent that has not fired for this many rows counts as dead.
        context: tokens per window read from the corpus. skip_first: positions dropped per window.
        outlier_ratio: rows with a norm above this multiple of the median are left out (attention
            sinks; ``harvest.outlier_mask``); ``None`` keeps every row.
        buffer_rows: rows in the shuffling buffer. model_batch: windows per forward pass.
        normalize: scale inputs to mean norm ``sqrt(d_in)`` while training (folded in at the end).
        autocast: run the model that makes the activations under ``torch.autocast`` to this dtype
            (``"bfloat16"``: several times faster on AMX CPUs and GPUs; ``harvest.autocast``).
        skip: transcoders only: train a linear skip connection ``W_skip [d_in, d_out]`` (zero at
            the start) with the sparse part (Paulo et al. 2025's skip transcoders).
        seed: seeds the initialization, the corpus order and the shuffles.
        checkpoint_every: steps between checkpoints (when a checkpoint directory is given).
    """

    architecture: str = "topk"
    d_sae: int = 4608
    k: int | None = 32
    n_tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 4e-4
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2
    l1_coefficient: float = 1.0
    l0_coefficient: float = 1.0
    bandwidth: float = 0.05
    init_threshold: float = 0.5
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 1_000_000
    context: int = 128
    skip_first: int = 1
    outlier_ratio: float | None = 10.0
    buffer_rows: int = 1 << 15
    model_batch: int = 16
    normalize: bool = True
    autocast: str | None = None
    skip: bool = False
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}; got {self.architecture!r}."
            )
        if self.architecture == "topk" and (self.k is None or not 1 <= self.k <= self.d_sae):
            raise ValueError(f"TopK needs k in 1..d_sae={self.d_sae}; got k={self.k!r}.")
        positive = (
            "d_sae",
            "n_tokens",
            "batch_size",
            "lr",
            "bandwidth",
            "init_threshold",
            "dead_after_tokens",
        )
        for name in (*positive, "context", "buffer_rows", "model_batch", "checkpoint_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be positive; got {getattr(self, name)!r}.")
        for name in ("warmup_fraction", "decay_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1]; got {getattr(self, name)!r}.")
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast must be 'bfloat16', 'float16' or None; got {self.autocast!r}.")
        if self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError("warmup_fraction + decay_fraction must not exceed 1.")
        if self.skip_first < 0 or self.skip_first >= self.context:
            raise ValueError(f"skip_first must be in 0..context-1; got {self.skip_first}.")
        if self.batch_size > self.buffer_rows // 2:
            raise ValueError(
                f"batch_size {self.batch_size} must be at most half of buffer_rows {self.buffer_rows}."
            )

    @property
    def steps(self) -> int:
        """Optimizer steps: ``ceil(n_tokens / batch_size)``."""
        return -(-self.n_tokens // self.batch_size)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """Where training is: ``done`` of ``total`` steps, and the last logged step's metrics."""

    done: int
    total: int
    loss: float
    fve: float
    l0: float
    dead_fraction: float
    lr: float
    tokens_per_second: float

    @property
    def status(self) -> str:
        """A one-line summary for progress bars."""
        return (
            f"FVE {self.fve:.3f} · L0 {self.l0:.1f} · dead {100 * self.dead_fraction:.1f}% · "
            f"{self.tokens_per_second:,.0f} tok/s"
        )


def lr_factor(step: int, total: int, warmup_fraction: float, decay_fraction: float) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up, constant, linear decay to zero."""
    warmup = max(1, round(warmup_fraction * total))
    decay = round(decay_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    if decay and step >= total - decay:
        return max(0.0, (total - step) / decay)
    return 1.0
