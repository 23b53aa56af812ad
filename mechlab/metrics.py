"""Metrics: pure functions from logits to one number per prompt.

Patching, attribution and explanation all ask "how much of the behaviour is left?", measured by a
metric of the model's output. A metric maps logits ``[*variants, batch, pos, d_vocab]`` to
``[*variants, batch]``: the leading ``variants`` axes let a patching sweep score many patched copies
of a batch in one call. Answers broadcast against ``batch``: one token id for every prompt, or one
per prompt.

The built-in metrics read the logits at one position ``pos`` (``PositionMetric``): a sweep then
computes the unembedding at that position alone. Answers can be given as text with
``LogitDiff.from_text(model, " Mary", " John")`` or ``answer_ids(model, " Paris")``, which check that
each answer is a single token.

The normalized effect of an intervention is ``(patched - corrupted) / (clean - corrupted)``: 1 means
the patched run behaves like the clean run, 0 like the corrupted one.

None of these functions modifies its inputs.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.errors import InputError
from mechlab.tokens import require_tokenizer, single_token

AnyLogits: TypeAlias = Float[Tensor, "*variants batch pos d_vocab"]
Scores: TypeAlias = Float[Tensor, "*variants batch"]
AnswerIds: TypeAlias = int | Sequence[int] | Int[Tensor, " batch"] | Int[Tensor, ""]


class Metric(Protocol):
    """Anything callable as ``metric(logits) -> scores`` (one number per prompt)."""

    def __call__(self, logits: AnyLogits) -> Scores: ...


@runtime_checkable
class PositionMetric(Protocol):
    """A metric that reads the logits at one position ``pos`` only.

    ``narrowed()`` is the same metric on logits already cut to that position (``[..., 1, d_vocab]``),
    which lets a sweep unembed one position instead of all; ``describe()`` names it in results.
    """

    pos: int

    def __call__(self, logits: AnyLogits) -> Scores: ...

    def narrowed(self) -> "PositionMetric": ...

    def describe(self) -> str: ...


def answer_ids(model: Any, answers: str | Sequence[str]) -> int | Int[Tensor, " batch"]:
    """Token ids of answers given as text: one id for a string, a tensor of ids for a list.

    Keep the leading space a word has in running text (``" Mary"``, not ``"Mary"``).

    Raises:
        InputError: the model has no tokenizer, or an answer is not exactly one token (the error
            shows how it splits).
    """
    require_tokenizer(model, "pass answer token ids, e.g. LogitDiff(7, 9).")
    if isinstance(answers, str):
        return single_token(model, answers, what="answer")
    return torch.tensor([single_token(model, text, what="answer") for text in answers])


def _show(answer: AnswerIds) -> str:
    value = answer.tolist() if isinstance(answer, Tensor) else answer
    if isinstance(value, list | tuple) and len(value) > 3:
        return "per prompt"
    return str(value)


def _ids(answer: AnswerIds, logits: Tensor) -> Tensor:
    ids = torch.as_tensor(answer, dtype=torch.long, device=logits.device)
    batch = logits.shape[-3]
    if ids.ndim > 1 or (ids.ndim == 1 and ids.shape[0] not in (1, batch)):
        raise InputError(
            f"Expected one answer token id, or one per prompt ({batch}); got shape {tuple(ids.shape)}."
        )
    return ids.expand(batch)


def _at(logits: Tensor, pos: int) -> Tensor:
    return logits[..., pos, :]


def _pick(values: Float[Tensor, "*variants batch d_vocab"], ids: Tensor) -> Tensor:
    index = ids.expand(values.shape[:-1]).unsqueeze(-1)
    return values.gather(-1, index).squeeze(-1)


@dataclasses.dataclass(frozen=True, eq=False)
class LogitDiff:
    """``logit[answer] - logit[wrong]`` at position ``pos`` (IOI's metric)."""

    answer: AnswerIds
    wrong: AnswerIds
    pos: int = -1

    def __call__(self, logits: AnyLogits) -> Scores:
        last = _at(logits, self.pos)
        return _pick(last, _ids(self.answer, logits)) - _pick(last, _ids(self.wrong, logits))

    @classmethod
    def from_text(
        cls, model: Any, answer: str | Sequence[str], wrong: str | Sequence[str], pos: int = -1
    ) -> "LogitDiff":
        """``LogitDiff`` from answers as text (one string, or one per prompt), e.g.
        ``LogitDiff.from_text(model, " Mary", " John")``; each must be a single token."""
        return cls(answer_ids(model, answer), answer_ids(model, wrong), pos)

    def narrowed(self) -> "LogitDiff":
        return dataclasses.replace(self, pos=0)

    def describe(self) -> str:
        return f"logit diff ({_show(self.answer)} − {_show(self.wrong)}) at pos {self.pos}"


@dataclasses.dataclass(frozen=True, eq=False)
class AnswerLogit:
    """The raw logit of ``answer`` at ``pos``."""

    answer: AnswerIds
    pos: int = -1

    def __call__(self, logits: AnyLogits) -> Scores:
        return _pick(_at(logits, self.pos), _ids(self.answer, logits))

    def narrowed(self) -> "AnswerLogit":
        return dataclasses.replace(self, pos=0)

    def describe(self) -> str:
        return f"AnswerLogit({_show(self.answer)}) at pos {self.pos}"


@dataclasses.dataclass(frozen=True, eq=False)
class AnswerLogProb:
    """``log p(answer)`` at ``pos``."""

    answer: AnswerIds
    pos: int = -1

    def __call__(self, logits: AnyLogits) -> Scores:
        logprobs = torch.log_softmax(_at(logits, self.pos).float(), dim=-1)
        return _pick(logprobs, _ids(self.answer, logits))

    def narrowed(self) -> "AnswerLogProb":
        return dataclasses.replace(self, pos=0)

    def describe(self) -> str:
        return f"AnswerLogProb({_show(self.answer)}) at pos {self.pos}"


@dataclasses.dataclass(frozen=True, eq=False)
class AnswerProb:
    """``p(answer)`` at ``pos``."""

    answer: AnswerIds
    pos: int = -1

    def __call__(self, logits: AnyLogits) -> Scores:
        return AnswerLogProb(self.answer, self.pos)(logits).exp()

    def narrowed(self) -> "AnswerProb":
        return dataclasses.replace(self, pos=0)

    def describe(self) -> str:
        return f"AnswerProb({_show(self.answer)}) at pos {self.pos}"


@dataclasses.dataclass(frozen=True, eq=False)
class KLFromReference:
    """``KL(reference ‖ model)`` at ``pos``, in nats; 0 when the output matches the reference.

    ``reference`` holds logits ``[batch, pos, d_vocab]`` (e.g. the clean run's).
    """

    reference: Float[Tensor, "batch pos d_vocab"]
    pos: int = -1

    def __call__(self, logits: AnyLogits) -> Scores:
        ref = torch.log_softmax(_at(self.reference, self.pos).float(), dim=-1)
        out = torch.log_softmax(_at(logits, self.pos).float(), dim=-1)
        return (ref.exp() * (ref - out)).sum(-1)

    def narrowed(self) -> "KLFromReference":
        return dataclasses.replace(self, reference=self.reference[:, [self.pos]], pos=0)

    def describe(self) -> str:
        return f"KL from reference at pos {self.pos}"


def normalized_effect(
    patched: Float[Tensor, "..."],
    clean: Float[Tensor, "..."] | float,
    corrupted: Float[Tensor, "..."] | float,
) -> Float[Tensor, "..."]:
    """``(patched - corrupted) / (clean - corrupted)``.

    Raises:
        InputError: when clean and corrupted are equal, so there is no effect to normalize by.
    """
    gap = torch.as_tensor(clean, dtype=patched.dtype) - torch.as_tensor(corrupted, dtype=patched.dtype)
    if torch.any(gap.abs() < 1e-12):
        raise InputError(
            "The clean and corrupted runs score the same on this metric, so a normalized effect is "
            "undefined. Choose a corruption that changes the behaviour (check the metric on both runs)."
        )
    return (patched - corrupted) / gap
