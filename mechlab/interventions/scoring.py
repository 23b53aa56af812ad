"""Scoring patched runs with a metric, computing logits only where the metric reads them.

A metric that reads one position (``mechlab.metrics.PositionMetric``: every built-in metric) and
accepts a leading variants axis lets a sweep compute the unembedding at that position only and score
every variant in one call. Any other callable is called once per variant on full
``[batch, pos, d_vocab]`` logits and may return one number per prompt ``[batch]`` or a scalar (then
every prompt gets that value).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mechlab.errors import InputError
from mechlab.metrics import PositionMetric
from mechlab.sites import fit_pos
from mechlab.targets import Target

MetricLike = Callable[[Tensor], Tensor]


@dataclasses.dataclass(frozen=True, eq=False)
class Scorer:
    """A metric with the positions it reads (``None``: all) and its form on those positions only."""

    metric: MetricLike
    positions: list[int] | None
    narrowed: MetricLike
    vectorized: bool

    def __call__(self, logits: Tensor) -> Tensor:
        """Score ``[variant, batch, pos', d_vocab]`` logits (at ``positions``) → ``[variant, batch]``."""
        if self.vectorized:
            return self.narrowed(logits).float()
        return torch.stack([self._one(logits[v]) for v in range(logits.shape[0])])

    def _one(self, logits: Tensor) -> Tensor:
        out = torch.as_tensor(self.narrowed(logits)).float()
        batch = logits.shape[0]
        if out.ndim == 0:
            return out.expand(batch)
        if out.shape != (batch,):
            raise InputError(
                f"The metric returned shape {tuple(out.shape)}; expected one number per prompt "
                f"({batch},) or a scalar. A metric maps logits [batch, pos, d_vocab] to [batch]."
            )
        return out

    def select(self, logits: Tensor) -> Tensor:
        """The metric's positions of full logits ``[..., pos, d_vocab]``."""
        return logits if self.positions is None else logits[..., self.positions, :]

    def baseline(self, logits: Tensor) -> Tensor:
        """Score one unpatched run's full logits ``[batch, pos, d_vocab]`` → ``[batch]``."""
        return self(self.select(logits).unsqueeze(0))[0]

    def stacked(self, logits: Tensor, variants: int) -> Tensor:
        """Score full logits of ``variants`` stacked copies of the batch ``[variants·batch, pos,
        d_vocab]`` → ``[variants, batch]``."""
        selected = self.select(logits)
        return self(selected.reshape(variants, -1, *selected.shape[1:]))

    def describe(self) -> str:
        return describe(self.metric)


def describe(metric: Any) -> str:
    """A short human-readable name for a metric."""
    if isinstance(metric, Target):
        return metric.label
    if isinstance(metric, PositionMetric):
        return metric.describe()
    return getattr(metric, "__name__", type(metric).__name__)


def scorer(metric: MetricLike, n_pos: int) -> Scorer:
    """Wrap ``metric`` for sweeps over prompts of ``n_pos`` tokens.

    A ``mechlab.targets.Target`` (the number an explanation explains) is scored through the metric it
    holds, so the same target drives attribution, readouts and patching alike.
    """
    if isinstance(metric, Target):
        metric = metric.metric
    if not callable(metric):
        raise InputError(f"The metric must be callable (logits -> scores), got {type(metric).__name__}.")
    if isinstance(metric, PositionMetric):
        pos = fit_pos(metric.pos, n_pos, f"The metric {metric.describe()}", InputError)
        return Scorer(metric, [pos], metric.narrowed(), True)
    return Scorer(metric, None, metric, False)
