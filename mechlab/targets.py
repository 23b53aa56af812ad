"""Targets: the one number an explanation explains, and the prompt it is computed on.

Every explanation method asks "why is this number what it is?" about a scalar read from the
model's logits: the logit, log-probability or probability of one next token, or the logit
difference between a token and a contrast token (" she" vs " he"), at one output position. A
``Target`` is such a ``mechlab.metrics`` metric plus a readable label and the token ids it reads.

A target token must be a *single* token. ``single_token`` turns text into its id or raises an
``InputError`` that shows how the text tokenizes and which single-token spellings exist.
"""

import dataclasses
from collections.abc import Callable
from typing import Literal, cast, get_args

import torch
from torch import Tensor

from mechlab.errors import InputError
from mechlab.metrics import AnswerLogit, AnswerLogProb, AnswerProb, LogitDiff
from mechlab.tokens import single_token, token_text
from mechlab.types import HookedModel, Tokens

TargetKind = Literal["logit", "logprob", "prob"]
TARGET_KINDS: tuple[str, ...] = get_args(TargetKind)
# A metric (``mechlab.metrics``): logits ``[*variants, batch, pos, d_vocab]`` → ``[*variants, batch]``.
MetricFn = Callable[[Tensor], Tensor]

_METRICS: dict[str, Callable[[int, int], MetricFn]] = {
    "logit": AnswerLogit,
    "logprob": AnswerLogProb,
    "prob": AnswerProb,
}


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
    """A scalar of the model's output to explain.

    Attributes:
        metric: maps logits ``[*variants, batch, pos, d_vocab]`` to ``[*variants, batch]``.
        label: how the target reads in tables and pages, e.g. ``logprob(' Paris')``.
        token: the answer token id (``None`` for a custom metric).
        contrast: the contrast token id of a logit difference, else ``None``.
        kind: ``logit``, ``logprob``, ``prob``, ``logit_diff`` or ``custom``.
        pos: the output position the metric reads.
    """

    metric: MetricFn
    label: str
    token: int | None = None
    contrast: int | None = None
    kind: str = "custom"
    pos: int = -1

    def __call__(self, logits: Tensor) -> Tensor:
        return self.metric(logits)


TargetSpec = Target | MetricFn | str | int


def make_target(
    model: HookedModel,
    token: str | int,
    *,
    contrast: str | int | None = None,
    kind: TargetKind = "logprob",
    pos: int = -1,
) -> Target:
    """A target from token text or ids: ``kind`` of ``token`` at ``pos``, or a logit difference.

    With ``contrast`` the target is ``logit[token] - logit[contrast]`` (``kind`` is ignored: the
    log-softmax normalizer cancels, so the log-prob difference is the same number).

    Raises:
        InputError: a token that is not exactly one token, or an unknown ``kind``.
    """
    if kind not in TARGET_KINDS:
        raise InputError(f"Unknown target kind {kind!r}; choose one of {', '.join(TARGET_KINDS)}.")
    answer = single_token(model, token)
    name = repr(token_text(model, answer))
    where = "" if pos == -1 else f" @ {pos}"
    if contrast is not None:
        wrong = single_token(model, contrast, what="contrast")
        label = f"logit({name}) − logit({token_text(model, wrong)!r}){where}"
        return Target(LogitDiff(answer, wrong, pos), label, answer, wrong, "logit_diff", pos)
    return Target(_METRICS[kind](answer, pos), f"{kind}({name}){where}", answer, None, kind, pos)


def resolve_pos(pos: int, n_pos: int, *, what: str = "Asked for position") -> int:
    """``pos`` as a non-negative index into a prompt of ``n_pos`` tokens.

    Raises:
        InputError: ``pos`` lies outside the prompt.
    """
    if not -n_pos <= pos < n_pos:
        raise InputError(
            f"{what} {pos}, but the prompt has {n_pos} tokens (valid positions: {-n_pos}..{n_pos - 1}; "
            "-1 is the last token, whose logits predict the next token)."
        )
    return pos % n_pos


def prompt_target(model: HookedModel, tokens: Tokens, target: TargetSpec) -> Target:
    """``resolve_target``, checked against the prompt: its position must lie inside it."""
    goal = resolve_target(model, target)
    resolve_pos(goal.pos, int(tokens.shape[-1]), what=f"The target {goal.label} reads position")
    return goal


def resolve_target(model: HookedModel, target: TargetSpec) -> Target:
    """Accept a ``Target``, any metric callable, or a token (its log-prob at the last position)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str | int):
        return make_target(model, target)
    if callable(target):
        pos = getattr(target, "pos", -1)
        return Target(cast(MetricFn, target), type(target).__name__, pos=pos if isinstance(pos, int) else -1)
    raise InputError(f"A target is a token (text or id), a Target or a metric callable; got {type(target)}.")


def top_next_tokens(model: HookedModel, logits: Tensor, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens at the last position of ``[1, pos, d_vocab]`` logits."""
    probs = torch.softmax(logits[0, -1].float(), dim=-1)
    top = torch.topk(probs, k)
    return [(token_text(model, int(i)), float(p)) for p, i in zip(top.values, top.indices, strict=True)]
