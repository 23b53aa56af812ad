"""Direct logit attribution sums to the logit, through ``mechlab.load_model`` (weights unfolded) and
through ``mechlab.compat`` (folded or not).

The invariant: ``Σ cache.logit_attrs(cache.decompose_resid(), t) = logit[t] − b_U[t] − b_ln_final ·
W_U[:, t]`` (the last two terms are constants no component writes; zero for Llama-style models). The
norms here have random weights: with weights of 1 a cache that forgot them would pass.
"""

from pathlib import Path
from typing import Any

import pytest
import torch
import transformer_lens
from torch import Tensor

import mechlab
from mechlab.compat import HookedTransformer
from tests.compat.helpers import toy

TOKENS = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def constant(model: Any, token: int) -> float:
    """``b_U[t] + b_ln_final · W_U[:, t]``: the part of a logit no component writes."""
    b_u = getattr(model, "b_U", None)
    value = 0.0 if b_u is None else float(b_u[token])
    ln_bias = getattr(model.ln_final, "bias", None)
    if isinstance(ln_bias, Tensor):
        value += float(ln_bias @ model.W_U[:, token])
    return value


@torch.no_grad()
def attribution_sum(model: Any, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``(Σ logit_attrs(decompose_resid()), logit − constant)`` for each prompt's top token at the
    last position."""
    logits, cache = model.run_with_cache(tokens)
    top = logits[:, -1].argmax(-1)
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), tokens=top, pos_slice=-1)
    expected = torch.stack(
        [logits[i, -1, t] - constant(model, int(t)) for i, t in enumerate(top.tolist())]
    ).detach()
    return attrs.sum(0).detach(), expected


def _models(kind: str, llama_dirs: dict[str, Path]) -> dict[str, Any]:
    """The same model loaded three ways: load_model (unfolded), compat folded, compat unfolded."""

    def load() -> Any:
        return (
            toy(kind.removeprefix("toy:"))
            if kind.startswith("toy:")
            else mechlab.load_model(str(llama_dirs[kind])).model
        )

    off = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    return {
        "load_model": load(),
        "compat": HookedTransformer.from_bridge(load()),
        "compat unprocessed": HookedTransformer.from_bridge(load(), **off),
    }


@pytest.mark.parametrize("kind", ["toy:tiny", "toy:tiny-gqa", "tied"])
def test_logit_attributions_sum_to_the_logit_every_way_the_model_is_loaded(
    kind: str, llama_dirs: dict[str, Path]
) -> None:
    for how, model in _models(kind, llama_dirs).items():
        got, expected = attribution_sum(model, TOKENS)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5, msg=how)


@torch.no_grad()
def test_transformer_lens_own_cache_would_miss_the_norm_weight() -> None:
    # What the issue measured (1.20 for a logit of 15.3 on SmolLM2), here on a toy: the stock
    # ActivationCache divides by the scale but forgets ln_final's weight.
    model = toy("tiny")
    logits, cache = model.run_with_cache(TOKENS)
    stock = transformer_lens.ActivationCache(cache.cache_dict, model)
    top = logits[:, -1].argmax(-1)
    wrong = stock.logit_attrs(stock.decompose_resid(pos_slice=-1), tokens=top, pos_slice=-1).sum(0)
    right, expected = attribution_sum(model, TOKENS)
    torch.testing.assert_close(right, expected, atol=2e-5, rtol=1e-5)
    assert (wrong - expected).abs().min() > 0.05


@pytest.mark.parametrize("kind", ["toy:tiny", "tied"])
@torch.no_grad()
def test_every_ln_applying_method_agrees(kind: str, llama_dirs: dict[str, Path]) -> None:
    model = _models(kind, llama_dirs)["load_model"]
    logits, cache = model.run_with_cache(TOKENS)
    token = int(logits[0, -1].argmax())
    direction = model.W_U[:, token]
    expected = float(logits[0, -1, token]) - constant(model, token)
    # accumulated_resid(apply_ln=True) runs the real ln_final on the whole stream (bias included).
    final = cache.accumulated_resid(apply_ln=True, pos_slice=-1)[-1, 0]
    ln_bias = getattr(model.ln_final, "bias", None)
    if isinstance(ln_bias, Tensor):
        final = final - ln_bias
    assert float(final @ direction) == pytest.approx(expected, abs=1e-4)
    # The Exploratory demo's recipe: the final residual stream through apply_ln_to_stack.
    scaled = cache.apply_ln_to_stack(cache["resid_post", -1][:, -1], layer=-1, pos_slice=-1)
    assert float(scaled[0] @ direction) == pytest.approx(expected, abs=1e-4)
    # Per head and per neuron, with the projection fused into the neuron stack.
    full, labels = cache.get_full_resid_decomposition(
        apply_ln=True, pos_slice=-1, project_output_onto=direction, return_labels=True
    )
    assert labels[-1] == "bias"
    assert float(full[:, 0].sum()) == pytest.approx(expected, abs=1e-3)
    unfused = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1, expand_neurons=False)
    assert float((unfused[:, 0] @ direction).sum()) == pytest.approx(expected, abs=1e-3)


@torch.no_grad()
def test_layer_inputs_include_the_norm_weight() -> None:
    # apply_ln_to_stack at a block's input gives what that block's ln1 hands the attention.
    model = toy("tiny")
    _, cache = model.run_with_cache(TOKENS)
    stack = cache.decompose_resid(layer=1, apply_ln=True)
    normalized = cache["blocks.1.ln1.hook_normalized"] * model.blocks[1].ln1.weight
    torch.testing.assert_close(stack.sum(0), normalized, atol=1e-5, rtol=1e-5)


@pytest.mark.smollm2
def test_smollm2_logit_attributions_sum_to_the_logit_through_load_model(smollm2: mechlab.LoadedModel) -> None:
    tokens = smollm2.model.to_tokens("When Mary and John went to the store, John gave a drink to")
    got, expected = attribution_sum(smollm2.model, tokens)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)
    assert float(expected[0]) > 5  # a real logit, not a near-zero coincidence


@pytest.mark.smollm2
def test_smollm2_logit_attributions_sum_to_the_logit_through_compat(ht_smollm2: HookedTransformer) -> None:
    tokens = ht_smollm2.to_tokens("When Mary and John went to the store, John gave a drink to")
    got, expected = attribution_sum(ht_smollm2, tokens)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-4)
