"""Prompting and generation with the hooked model, recording each chosen token's probability and
the top alternatives the model weighed at that step."""

import dataclasses
import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.errors import InputError
from mechlab.models import kv_cache, plain
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


def require_tokenizer(model: HookedModel) -> Any:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InputError(
            "This model has no tokenizer (toy models take token ids): pass a tensor of token ids "
            "instead of text."
        )
    return tokenizer


EMPTY_PROMPT = "The prompt is empty: give the text the model should continue."


def check_prompt(prompt: str) -> None:
    """The checks on a prompt that need no model: it must hold more than whitespace.

    Raises:
        InputError: the prompt is empty or whitespace only.
    """
    if not prompt or not prompt.strip():
        raise InputError(EMPTY_PROMPT)


def encode_prompt(model: HookedModel, prompt: str, *, chat: bool = False) -> tuple[str, Tokens]:
    """``(model_text, tokens)`` for a prompt, applying the chat template when ``chat`` is True.

    Raises:
        InputError: empty prompt, chat requested on a model without a chat template, or a prompt
            longer than the model's context.
    """
    tokenizer = require_tokenizer(model)
    check_prompt(prompt)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("This model has no chat template; run without --chat / chat=True.")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        tokens = model.to_tokens(text, prepend_bos=False, truncate=False)
    else:
        text = prompt
        tokens = model.to_tokens(text, truncate=False)
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[-1] > n_ctx:
        raise InputError(
            f"The prompt is {tokens.shape[-1]} tokens long; this model's context holds {n_ctx}. "
            "Shorten the prompt."
        )
    return text, tokens


@dataclasses.dataclass(frozen=True)
class Decoded:
    """What the decoding loop produced: new token ids and the logits each was chosen from.

    Attributes:
        token_ids: the generated ids, in order (the end-of-sequence token included when it came).
        logits: ``[d_vocab]`` logits of each step, before temperature.
        cached: whether the steps ran against a key/value cache (``False``: full recompute).
    """

    token_ids: tuple[int, ...]
    logits: tuple[Float[Tensor, " d_vocab"], ...]
    cached: bool


MSG_CACHE_BROKEN = (
    "This model's key/value cache does not reproduce a full forward pass (a cached step differed "
    "from recomputing the whole sequence), so mechlab generates without it: the tokens are right, "
    "generation is slower. This usually means an incompatible transformers / TransformerLens pair; "
    "install the versions in constraints.txt."
)


def _choose(logits: Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _stepper(model: HookedModel, use_twin: bool) -> tuple[Any, Callable[[Tokens, Any], Tensor], Any]:
    """``(key, run, cache)`` for decoding ``model``: the plain twin while nothing is hooked (and
    ``use_twin``), else the model.

    ``key`` is what the cache verdict is kept under (``kv_cache.verdict``); ``cache`` is a fresh
    key/value cache, or ``None`` where the model keeps none.
    """
    cache = kv_cache.new_cache(model)
    twin = None if cache is None or not use_twin or plain.hooks_attached(model) else plain.twin(model)
    if twin is not None:
        return twin, lambda tokens, cache: plain.run(twin, tokens, cache), cache
    return model, lambda tokens, cache: kv_cache.run(model, tokens, cache), cache


@torch.no_grad()
def decode(
    model: HookedModel,
    tokens: Tokens,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int | None = 0,
    stop_ids: Collection[int] = (),
    use_cache: bool = True,
    through_hooks: bool = False,
) -> Decoded:
    """mechlab's decoding loop: greedy (``temperature`` 0) or sampled.

    The prompt runs once, then each new token runs alone against a key/value cache. While a hook is
    attached to the model, every step runs through the hooked model, so the hooks fire at every
    step; while none is, the steps run on the model's plain transformers twin (``mechlab.models.plain``:
    the same tensors without the hook points' per-call cost). The first cached step of each is checked
    against the hooked model's full forward of the whole sequence; if they differ, it is marked and
    decoding recomputes the whole sequence every step through the hooked model, with a
    ``RuntimeWarning`` (``mechlab.models.kv_cache``).

    Args:
        model: the hooked model.
        tokens: ``[1, pos]`` prompt ids.
        max_new_tokens: at most this many steps.
        temperature: 0 for greedy decoding; > 0 samples with this temperature.
        seed: seeds sampling (a private generator: the global RNG is untouched).
        stop_ids: stop after generating one of these (it is included).
        use_cache: ``False`` recomputes the whole sequence at every step.
        through_hooks: run every step through the hooked model even when nothing is hooked
            (``verify`` does, to check the hooked model's own key/value cache).
    """
    generator = None
    if temperature > 0 and seed is not None:
        generator = torch.Generator(device=tokens.device).manual_seed(seed)
    key, run, cache = _stepper(model, use_twin=not through_hooks)
    if not use_cache or kv_cache.verdict(key) is False:
        key, run, cache = model, lambda tokens, _: model(tokens), None  # type: ignore[operator]
    context = tokens
    logits = run(context, cache)[0, -1]
    ids: list[int] = []
    chosen_from: list[Tensor] = []
    for step in range(max_new_tokens):
        token = _choose(logits, temperature, generator)
        ids.append(token)
        chosen_from.append(logits)
        if token in stop_ids or step == max_new_tokens - 1:
            break
        context = torch.cat([context, context.new_tensor([[token]])], dim=1)
        logits = run(context if cache is None else context[:, -1:], cache)[0, -1]
        if cache is not None and kv_cache.verdict(key) is None:
            full = model(context)[0, -1]  # type: ignore[operator]
            works = kv_cache.cached_length(cache) == context.shape[-1] and kv_cache.agrees(logits, full)
            kv_cache.record(key, works)
            if not works:
                warnings.warn(MSG_CACHE_BROKEN, RuntimeWarning, stacklevel=3)
                key, run, cache, logits = model, lambda tokens, _: model(tokens), None, full  # type: ignore[operator]
    return Decoded(tuple(ids), tuple(chosen_from), cached=cache is not None)


def stop_ids(model: HookedModel) -> frozenset[int]:
    """The ids that end a generation: the tokenizer's end-of-sequence token, if it has one."""
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    return frozenset() if eos is None else frozenset({int(eos)})


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
