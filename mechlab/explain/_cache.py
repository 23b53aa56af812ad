"""Run a model once and keep the activations at a few sites (no gradients, no other hooks)."""

import torch
from torch import Tensor

from mechlab.sites import Site
from mechlab.types import HookedModel, Logits, Tokens


def run_sites(model: HookedModel, tokens: Tokens, sites: list[Site]) -> tuple[Logits, dict[Site, Tensor]]:
    """``(logits, {site: activation})`` for one forward pass caching only ``sites``' hooks."""
    names = list(dict.fromkeys(s.hook_name for s in sites))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    return logits, {s: cache[s.hook_name].detach() for s in sites}
