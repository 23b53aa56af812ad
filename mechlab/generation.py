"""Prompting and generation with the hooked model, recording each chosen token's probability and
the top alternatives the model weighed at that step."""

import dataclasses

import torch

from mechlab.errors import InputError
from mechlab.models.decoding import decode, stop_ids
from mechlab.tokens import encode_prompt, require_tokenizer
from mechlab.types import HookedModel, Tokens


@dataclasses.dataclass(frozen=True)
class Alternative:
    token_id: int
    text: str
    prob: float


@dataclasses.dataclass(frozen=True)
class Step:
    """One generated token with its probability and the top-k alternatives at that position."""

    token_id: int
    text: str
    prob: float
    alternatives: tuple[Alternative, ...]


@dataclasses.dataclass(frozen=True)
class Completion:
    """A prompt as the model saw it and what it generated.

    Attributes:
        prompt: the text the user gave.
        model_text: the exact text fed to the model (chat template applied if ``chat``).
        prompt_tokens: ``[1, pos]`` token ids of ``model_text`` (BOS included if the model adds it).
        steps: one ``Step`` per generated token.
        text: the generated text.
    """

    prompt: str
    model_text: str
    chat: bool
    prompt_tokens: Tokens
    steps: tuple[Step, ...]
    text: str
    seed: int | None
    temperature: float

    @property
    def tokens(self) -> Tokens:
        """Prompt and completion token ids, ``[1, pos]``."""
        new = torch.tensor([[s.token_id for s in self.steps]], dtype=self.prompt_tokens.dtype)
        return torch.cat([self.prompt_tokens, new.to(self.prompt_tokens.device)], dim=1)


def generate(
    model: HookedModel,
    prompt: str,
    *,
    chat: bool = False,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int | None = 0,
    top_k: int = 5,
) -> Completion:
    """Generate a completion with the hooked model.

    Args:
        model: a hooked model with a tokenizer.
        prompt: the user's text.
        chat: wrap the prompt in the model's chat template as a user message.
        max_new_tokens: at most this many new tokens (stops early at end-of-sequence).
        temperature: 0 for greedy decoding; > 0 samples with this temperature.
        seed: seeds sampling (ignored when greedy); the same seed gives the same completion.
        top_k: how many alternatives to record per step.

    Raises:
        InputError: as ``encode_prompt``, or a prompt that fills the whole context (generation
            needs room for at least one new token).
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    text, tokens = encode_prompt(model, prompt, chat=chat)
    n_ctx, n_prompt = int(model.cfg.n_ctx), int(tokens.shape[-1])
    if n_prompt >= n_ctx:
        raise InputError(
            f"The prompt is {n_prompt} tokens long and fills this model's whole context ({n_ctx} "
            "tokens), leaving no room to generate a token. Shorten the prompt to at most "
            f"{n_ctx - 1} tokens."
        )
    tokenizer = require_tokenizer(model)
    out = decode(
        model,
        tokens,
        max_new_tokens=min(max_new_tokens, n_ctx - n_prompt),
        temperature=temperature,
        seed=seed,
        stop_ids=stop_ids(model),
    )
    steps = []
    for token_id, logits in zip(out.token_ids, out.logits, strict=True):
        probs = torch.softmax(logits.float(), dim=-1)
        top = torch.topk(probs, top_k)
        alternatives = tuple(
            Alternative(int(i), tokenizer.decode([int(i)]), float(p))
            for p, i in zip(top.values, top.indices, strict=True)
        )
        steps.append(
            Step(int(token_id), tokenizer.decode([int(token_id)]), float(probs[token_id]), alternatives)
        )
    return Completion(
        prompt=prompt,
        model_text=text,
        chat=chat,
        prompt_tokens=tokens,
        steps=tuple(steps),
        text=tokenizer.decode(list(out.token_ids), skip_special_tokens=True),
        seed=seed if temperature > 0 else None,
        temperature=temperature,
    )


@torch.no_grad()
def next_token_alternatives(model: HookedModel, tokens: Tokens, k: int = 10) -> list[Alternative]:
    """The ``k`` most likely next tokens after ``tokens`` (``[1, pos]``) with their probabilities."""
    tokenizer = require_tokenizer(model)
    logits = model(tokens)[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k)
    return [
        Alternative(int(i), tokenizer.decode([int(i)]), float(p))
        for p, i in zip(top.values, top.indices, strict=True)
    ]
