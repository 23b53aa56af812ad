import pytest
import torch

from mechlab.errors import InputError
from mechlab.metrics import AnswerLogProb, AnswerProb, KLFromReference, LogitDiff, normalized_effect


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
