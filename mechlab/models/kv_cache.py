"""Key/value caches for incremental runs of the hooked model (generation, patching's shared prefix).

A causal model's keys and values at a position never change once computed, so a decoder keeps them
(a key/value cache) and runs each new token alone. On a TransformerLens 4 bridge the attention is
reimplemented by TransformerLens (so its hooks fire at the right stages) and extends the cache
itself, reading it from the keyword arguments the transformers decoder layer passes down.

transformers 5.24 renamed that argument from ``past_key_values`` to ``cache`` (the old name is still
accepted at the model's entry, with a FutureWarning, until 5.40). TransformerLens 4.3's attention
bridges read only ``past_key_values`` (or ``layer_past``), so under transformers ≥ 5.24 they never
extend the cache: every incremental step attends to itself alone while full forwards stay exact.
``enable`` fixes this at that boundary: a forward pre-hook on each attention bridge hands it the
cache under the name it reads. ``keyword`` names the argument the model's own forward takes, so
callers pass the cache without a deprecation warning on any version.

Whoever decodes with a cache checks it once per model on a real input (a cached step must reproduce
a full forward: ``agrees``) and keeps the outcome here (``record`` / ``verdict``), so that a future
change of the same kind falls back to recomputing instead of giving wrong tokens silently.
"""

import inspect
import weakref
from typing import Any

import torch

from mechlab.types import HookedModel, Tokens

# Relative agreement a cached step must reach with a full forward (float32 logits).
TOLERANCE = 1e-4
# With llama.cpp's kernels (quantized mode), one row and many rows take different kernel paths: a
# cached step moved the Llama-3.2-1B-shaped file's logits by 2.2% of their range (0 on SmolLM2's
# Q4_1). A cache that does not work moves them by the whole range.
NATIVE_TOLERANCE = 5e-2
_ALIASES = ("past_key_values", "layer_past")
_VERDICTS: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def keyword(model: HookedModel) -> str | None:
    """The name under which the model's transformers forward takes a cache (``None``: it takes none).

    TransformerLens-native models (``toy:``) have no transformers model behind them and keep no cache.
    """
    hf = getattr(model, "original_model", None)
    return None if hf is None else keyword_of(hf)


def keyword_of(hf: Any) -> str | None:
    """The name under which a transformers model's forward takes a cache (``None``: it takes none)."""
    params = inspect.signature(hf.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def hand_cache_over(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Forward pre-hook: pass a ``cache`` keyword on as ``past_key_values`` too (see the module doc)."""
    cache = kwargs.get("cache")
    if cache is not None and all(kwargs.get(name) is None for name in _ALIASES):
        kwargs = {**kwargs, "past_key_values": cache}
        return args, kwargs
    return None


def enable(model: HookedModel) -> bool:
    """Make every attention bridge of ``model`` extend the cache it is given; idempotent.

    Returns whether the model can take a cache at all (see ``keyword``).
    """
    if keyword(model) is None:
        return False
    for module in model.modules():  # type: ignore[attr-defined]
        if hasattr(module, "_update_kv_cache") and not getattr(module, "_mechlab_cache_alias", False):
            module.register_forward_pre_hook(hand_cache_over, with_kwargs=True)
            module._mechlab_cache_alias = True
    return True


def new_cache(model: HookedModel) -> Any:
    """An empty transformers ``DynamicCache`` for ``model``, or ``None`` if it takes no cache."""
    if not enable(model):
        return None
    from transformers import DynamicCache

    return DynamicCache()


def run(model: HookedModel, tokens: Tokens, cache: Any) -> torch.Tensor:
    """Logits ``[batch, pos, d_vocab]`` of ``tokens`` continuing the positions held in ``cache``."""
    name = keyword(model)
    if cache is None or name is None:
        return model(tokens)  # type: ignore[operator]
    return model(tokens, **{name: cache})  # type: ignore[operator]


def cached_length(cache: Any) -> int:
    """How many positions ``cache`` holds (0 for an empty or absent cache)."""
    if cache is None:
        return 0
    return int(cache.get_seq_length())


def agrees(a: torch.Tensor, b: torch.Tensor, tolerance: float = TOLERANCE) -> bool:
    """Whether two logit tensors agree within ``tolerance`` (relative to the larger magnitude)."""
    scale = max(1.0, float(b.abs().max()))
    return a.shape == b.shape and float((a.float() - b.float()).abs().max()) <= tolerance * scale


def tolerance(model: HookedModel) -> float:
    """The agreement ``model``'s cached steps must reach: ``NATIVE_TOLERANCE`` where its products run
    on llama.cpp's kernels, else ``TOLERANCE``."""
    from mechlab.models.quantized import native_products

    return NATIVE_TOLERANCE if native_products(model) else TOLERANCE


def verdict(runner: Any) -> bool | None:
    """Whether a cached step of ``runner`` (a hooked model, or its plain twin) was found to reproduce
    the hooked model's full forward (``None``: unchecked)."""
    return _VERDICTS.get(runner)


def record(runner: Any, works: bool) -> None:
    """Keep the outcome of checking ``runner``'s cache for its lifetime."""
    _VERDICTS[runner] = works
