"""Targets and prompt handling shared by every explanation method."""

import pytest
import torch

import mechlab
from mechlab.metrics import AnswerLogit
from mechlab.targets import make_target, resolve_target
from mechlab.tokens import as_tokens, single_token


def test_targets_read_the_right_numbers(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    model = tiny.model
    with torch.no_grad():
        logits = model(tokens[:1])
    logprobs = torch.log_softmax(logits[0, 3], -1)
    assert abs(float(make_target(model, 7, kind="logprob", pos=3)(logits)[0]) - float(logprobs[7])) < 1e-6
    diff = make_target(model, 7, contrast=9)
    assert diff.kind == "logit_diff" and diff.label == "logit('#7') − logit('#9')"
    assert abs(float(diff(logits)[0]) - float(logits[0, -1, 7] - logits[0, -1, 9])) < 1e-6
    custom = resolve_target(model, AnswerLogit(4, pos=2))
    assert custom.pos == 2 and custom.token is None


def test_prompts_and_tokens_are_checked(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    model = tiny.model
    copy = as_tokens(model, tokens[0])
    assert copy.shape == (1, 12) and copy.data_ptr() != tokens.data_ptr()
    with pytest.raises(mechlab.InputError, match="no tokenizer"):
        as_tokens(model, "text")
    with pytest.raises(mechlab.InputError, match="integer token ids"):
        as_tokens(model, torch.zeros(3))
    with pytest.raises(mechlab.InputError, match=r"0\.\.49"):
        as_tokens(model, torch.tensor([1, 50]))
    with pytest.raises(mechlab.InputError, match="33 tokens long; this model's context holds 32"):
        as_tokens(model, torch.zeros(33, dtype=torch.long))
    with pytest.raises(mechlab.InputError, match="outside the vocabulary"):
        single_token(model, 77)
    with pytest.raises(mechlab.InputError, match="as a token id"):
        single_token(model, " Paris")
