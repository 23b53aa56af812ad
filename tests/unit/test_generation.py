"""Prompt checks before generation, on the tiny toy model given a one-character-per-token tokenizer."""

from typing import Any

import pytest
import torch

import mechlab
from mechlab.errors import InputError
from mechlab.generation import generate
from mechlab.tokens import check_prompt


class _CharTokenizer:
    """One token per character: ``"a"`` is id 0, ``"b"`` id 1, …, wrapping at the toy's vocabulary."""

    chat_template = None

    def __init__(self, d_vocab: int) -> None:
        self.d_vocab = d_vocab

    def decode(self, ids: list[int], **_: Any) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)


class _CharModel:
    """``tiny`` with ``_CharTokenizer`` (no end-of-sequence token): text in, the toy's own forward."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.tokenizer = _CharTokenizer(int(model.cfg.d_vocab))

    def to_tokens(self, text: str, **_: Any) -> torch.Tensor:
        return torch.tensor([[(ord(c) - ord("a")) % self.tokenizer.d_vocab for c in text]])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@pytest.fixture
def char_model(tiny: mechlab.LoadedModel) -> _CharModel:
    return _CharModel(tiny.model)


def test_a_prompt_that_fills_the_context_is_refused_before_generating(char_model: _CharModel) -> None:
    n_ctx = int(char_model.cfg.n_ctx)
    assert n_ctx == 32
    with pytest.raises(
        InputError,
        match=r"The prompt is 32 tokens long and fills this model's whole context \(32 tokens\), leaving "
        r"no room to generate a token\. Shorten the prompt to at most 31 tokens\.",
    ):
        generate(char_model, "a" * n_ctx, max_new_tokens=4)
    with pytest.raises(InputError, match="The prompt is 33 tokens long; this model's context holds 32"):
        generate(char_model, "a" * (n_ctx + 1), max_new_tokens=4)


def test_one_token_short_of_the_context_generates_exactly_one_token(char_model: _CharModel) -> None:
    completion = generate(char_model, "ab" * 15 + "a", max_new_tokens=4)
    assert completion.prompt_tokens.shape == (1, 31)
    assert len(completion.steps) == 1 and completion.tokens.shape == (1, 32)


def test_empty_prompts_are_refused_without_a_model() -> None:
    check_prompt(" x ")  # text with spaces around it is a prompt
    for prompt in ("", "  \n\t"):
        with pytest.raises(InputError, match="The prompt is empty: give the text the model should continue"):
            check_prompt(prompt)
