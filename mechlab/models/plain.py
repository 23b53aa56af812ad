"""A plain transformers twin of a hooked model, for decoding when no hook is attached.

A TransformerBridge runs every sub-module of the transformers model through a bridge component that
fires hook points (about 1,800 module calls per forward on SmolLM2 against ~400, each RMSNorm
computed twice), which costs tens of milliseconds per forward: most of a decoding step on a small
model. When nothing is hooked, those hook points change nothing, so the same computation can run on
a plain instance of the transformers class whose parameters and buffers *are* the bridge's (the same
tensor objects: no copy, and an edit of the weights reaches both).

``twin(model)`` builds that instance once per model (on the meta device, then the bridge's tensors
assigned) and returns ``None`` where the model is not a bridge over a transformers model or the names
do not map one to one. Decoding uses it only while ``hooks_attached(model)`` is false, and checks its
first cached step against the bridge's own full forward (``mechlab.models.decoding.decode``).
"""

import weakref
from typing import Any

import torch

from mechlab.models import kv_cache
from mechlab.types import HookedModel, Tokens

_WRAPPED = "._original_component"
_TWINS: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], Any]]" = weakref.WeakKeyDictionary()


def _wiring(model: HookedModel) -> set[int]:
    """Ids of the pre-hooks a bridge installs on itself to feed its own hook points.

    A TransformerBridge block wires these on its first forward (``BlockBridge._capture_hook_handles``);
    they only hand tensors to hook points, whose own hooks ``hooks_attached`` sees.
    """
    return {
        handle.id
        for sub in model.modules()  # type: ignore[attr-defined]
        for handle in getattr(sub, "_capture_hook_handles", ())
    }


def hooks_attached(model: HookedModel) -> bool:
    """Whether any forward or backward hook (global, or on any sub-module) could act on a forward.

    The bridge's own wiring and mechlab's cache hand-over (``kv_cache.hand_cache_over``) do not count.
    """
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    wiring = _wiring(model)
    for sub in model.modules():  # type: ignore[attr-defined]
        if sub._forward_hooks or sub._backward_hooks or getattr(sub, "_backward_pre_hooks", None):
            return True
        for key, hook in sub._forward_pre_hooks.items():
            if key not in wiring and hook is not kv_cache.hand_cache_over:
                return True
    return False


def _fingerprint(hf: Any) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in hf.parameters())


def twin(model: HookedModel) -> Any:
    """The plain transformers model sharing ``model``'s tensors, or ``None`` where there is none."""
    hf = getattr(model, "original_model", None)
    if hf is None:
        return None
    fingerprint = _fingerprint(hf)
    kept = _TWINS.get(model)
    if kept is not None and kept[0] == fingerprint:
        return kept[1]
    built = _build(hf)
    if built is not None:
        _TWINS[model] = (fingerprint, built)
    return built


def _build(hf: Any) -> Any:
    params = {n.replace(_WRAPPED, ""): p for n, p in hf.named_parameters(remove_duplicate=False)}
    buffers = {n.replace(_WRAPPED, ""): b for n, b in hf.named_buffers(remove_duplicate=False)}
    try:
        with torch.device("meta"):
            plain = type(hf)(hf.config)
    except Exception:  # a class that cannot be built from its config alone: decode through the bridge
        return None
    wanted_params = [n for n, _ in plain.named_parameters(remove_duplicate=False)]
    wanted_buffers = [n for n, _ in plain.named_buffers(remove_duplicate=False)]
    if not set(wanted_params) <= params.keys() or not set(wanted_buffers) <= buffers.keys():
        return None
    for name in wanted_params:
        owner, _, leaf = name.rpartition(".")
        setattr(plain.get_submodule(owner), leaf, params[name])
    for name in wanted_buffers:
        owner, _, leaf = name.rpartition(".")
        plain.get_submodule(owner)._buffers[leaf] = buffers[name]
    return plain.eval()


def run(plain: Any, tokens: Tokens, cache: Any) -> torch.Tensor:
    """Logits ``[batch, pos, d_vocab]`` of the twin on ``tokens`` continuing ``cache`` (or from scratch)."""
    if cache is None:
        return plain(tokens).logits
    name = kv_cache.keyword_of(plain) or "past_key_values"
    return plain(tokens, **{name: cache}).logits
