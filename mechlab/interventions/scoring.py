"""Scoring patched runs with a metric, computing logits only where the metric reads them.

mechlab's metrics (``mechlab.metrics``) read one position (``pos``) and accept a leading variants
axis, so a sweep computes the unembedding at that position only and scores every variant in one
call. Any other callable is called once per variant on full ``[batch, pos, d_vocab]`` logits and
may return one number per prompt ``[batch]`` or a scalar (then every prompt gets that value).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mechlab.errors import InputError
from mechlab.metrics import AnswerLogit, AnswerLogProb, AnswerProb, KLFromReference, LogitDiff

MetricLike = Callable[[Tensor], Tensor]
_POSITIONAL = (LogitDiff, AnswerLogit, AnswerLogProb, AnswerProb)


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

    def describe(self) -> str:
        return describe(self.metric)


def describe(metric: Any) -> str:
    """A short human-readable name for a metric."""
    if isinstance(metric, LogitDiff):
        return f"logit diff ({_ids(metric.answer)} − {_ids(metric.wrong)}) at pos {metric.pos}"
    if isinstance(metric, KLFromReference):
        return f"KL from reference at pos {metric.pos}"
    if isinstance(metric, _POSITIONAL):
        return f"{type(metric).__name__}({_ids(metric.answer)}) at pos {metric.pos}"
    return getattr(metric, "__name__", type(metric).__name__)


def _ids(value: Any) -> str:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, list | tuple) and len(value) > 3:
        return "per prompt"
    return str(value)


def scorer(metric: MetricLike, n_pos: int) -> Scorer:
    """Wrap ``metric`` for sweeps over prompts of ``n_pos`` tokens."""
    if not callable(metric):
        raise InputError(f"The metric must be callable (logits -> scores), got {type(metric).__name__}.")
    if isinstance(metric, _POSITIONAL):
        pos = _check_pos(metric.pos, n_pos)
        return Scorer(metric, [pos], dataclasses.replace(metric, pos=0), True)
    if isinstance(metric, KLFromReference):
        pos = _check_pos(metric.pos, n_pos)
        narrowed = dataclasses.replace(metric, reference=metric.reference[:, [pos]], pos=0)
        return Scorer(metric, [pos], narrowed, True)
    return Scorer(metric, None, metric, False)


def _check_pos(pos: int, n_pos: int) -> int:
    if not -n_pos <= pos < n_pos:
        raise InputError(f"The metric reads position {pos}, but the prompts have {n_pos} tokens.")
    return pos % n_pos
