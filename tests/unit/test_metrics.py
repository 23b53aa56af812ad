import types

import pytest
import torch

from mechlab.errors import InputError
from mechlab.metrics import (
    AnswerLogit,
    AnswerLogProb,
    AnswerProb,
    KLFromReference,
    LogitDiff,
    PositionMetric,
    answer_ids,
    normalized_effect,
)


def logits_fixture() -> torch.Tensor:
    logits = torch.zeros(2, 3, 5)
    logits[0, -1] = torch.tensor([0.0, 2.0, 1.0, 0.0, 0.0])
    logits[1, -1] = torch.tensor([3.0, 0.0, 0.5, 0.0, 0.0])
    return logits


def test_logit_diff_per_prompt_answers() -> None:
    logits = logits_fixture()
    assert torch.equal(LogitDiff([1, 0], [2, 2])(logits), torch.tensor([1.0, 2.5]))
    assert torch.equal(LogitDiff(1, 2)(logits), torch.tensor([1.0, -0.5]))


def test_metrics_broadcast_over_variant_axes() -> None:
    logits = logits_fixture()
    stacked = torch.stack([logits, logits * 2, logits * 0])
    scores = LogitDiff([1, 0], [2, 2])(stacked)
    assert torch.equal(scores, torch.tensor([[1.0, 2.5], [2.0, 5.0], [0.0, 0.0]]))


def test_prob_and_logprob_agree_with_softmax() -> None:
    logits = logits_fixture()
    expected = torch.softmax(logits[:, -1], -1)[torch.arange(2), torch.tensor([1, 0])]
    assert torch.allclose(AnswerProb([1, 0])(logits), expected)
    assert torch.allclose(AnswerLogProb([1, 0])(logits).exp(), expected)


def test_kl_is_zero_on_the_reference_and_positive_elsewhere() -> None:
    logits = logits_fixture()
    metric = KLFromReference(logits)
    assert torch.allclose(metric(logits), torch.zeros(2), atol=1e-7)
    assert (metric(logits * 0) > 0).all()


def test_metrics_do_not_modify_inputs() -> None:
    logits = logits_fixture()
    before = logits.clone()
    for metric in (LogitDiff(1, 2), AnswerProb(1), KLFromReference(logits.clone())):
        metric(logits)
    assert torch.equal(logits, before)


def test_answer_shape_mismatch() -> None:
    with pytest.raises(InputError, match=r"one per prompt \(2\); got shape \(3,\)"):
        LogitDiff([1, 2, 3], 0)(logits_fixture())


def test_normalized_effect() -> None:
    assert torch.allclose(
        normalized_effect(torch.tensor([3.0, 1.0, 2.0]), 3.0, 1.0), torch.tensor([1.0, 0.0, 0.5])
    )
    with pytest.raises(InputError, match="score the same"):
        normalized_effect(torch.tensor([1.0]), 2.0, 2.0)


@pytest.mark.parametrize("pos", [-1, 1])
def test_position_metrics_narrow_to_the_one_position_they_read(pos: int) -> None:
    logits = torch.randn(3, 2, 4, 5, generator=torch.Generator().manual_seed(0))  # variants batch pos vocab
    metrics = [
        LogitDiff([1, 0], 2, pos),
        AnswerLogit(3, pos),
        AnswerLogProb([4, 1], pos),
        AnswerProb(0, pos),
        KLFromReference(logits[0], pos),
    ]
    for metric in metrics:
        assert isinstance(metric, PositionMetric)
        narrowed = metric.narrowed()
        torch.testing.assert_close(narrowed(logits[..., [pos], :]), metric(logits), atol=1e-6, rtol=0)
        assert metric.describe().endswith(f"at pos {pos}")
    assert LogitDiff(list(range(4)), 2).describe() == "logit diff (per prompt − 2) at pos -1"
    assert not isinstance(lambda logits: logits[:, -1, 0], PositionMetric)


class _WordTokenizer:
    """Greedy longest match over a few pieces, with the two tokenizer methods mechlab calls."""

    pieces = (" Mary", " John", " Mar", "anne", " Paris", "?")

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            piece = max((p for p in self.pieces if text.startswith(p, i)), key=len, default="?")
            ids.append(self.pieces.index(piece))
            i += len(piece)  # an unknown character is one "?" piece
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


class _WordModel:
    """A stand-in for a model with a tokenizer."""

    tokenizer = _WordTokenizer()
    cfg = types.SimpleNamespace(d_vocab=len(_WordTokenizer.pieces))


def test_answers_as_text_must_be_single_tokens() -> None:
    model = _WordModel()
    assert answer_ids(model, " Paris") == 4
    assert torch.equal(answer_ids(model, [" Mary", " John"]), torch.tensor([0, 1]))
    metric = LogitDiff.from_text(model, [" Mary", " John"], " Paris", pos=-2)
    assert metric.answer.tolist() == [0, 1] and metric.wrong == 4 and metric.pos == -2
    with pytest.raises(
        InputError, match=r"' Maryanne' is not one token: .*\[' Mary', 'anne'\].*leading space"
    ):
        LogitDiff.from_text(model, " Maryanne", " John")
    with pytest.raises(InputError, match="no tokenizer"):
        answer_ids(object(), " Mary")
