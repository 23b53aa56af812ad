"""mechlab's decoding loop: greedy or sampled generation through the hooked model or its plain twin.

The prompt runs once, then each new token runs alone against a key/value cache
(``mechlab.models.kv_cache``). While a hook is attached, every step runs through the hooked model;
while none is, on its plain transformers twin (``mechlab.models.plain``). The first cached step of
each is checked against the hooked model's full forward; a cache that does not reproduce it is
bypassed (full recompute every step) with a warning.
"""

import dataclasses
import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.models import kv_cache, plain
from mechlab.types import HookedModel, Tokens


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
            works = kv_cache.cached_length(cache) == context.shape[-1] and kv_cache.agrees(
                logits, full, kv_cache.tolerance(model)
            )
            kv_cache.record(key, works)
            if not works:
                warnings.warn(MSG_CACHE_BROKEN, RuntimeWarning, stacklevel=3)
                key, run, cache, logits = model, lambda tokens, _: model(tokens), None, full  # type: ignore[operator]
    return Decoded(tuple(ids), tuple(chosen_from), cached=cache is not None)


def stop_ids(model: HookedModel) -> frozenset[int]:
    """The ids that end a generation: the tokenizer's end-of-sequence token, if it has one."""
    eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
    return frozenset() if eos is None else frozenset({int(eos)})
