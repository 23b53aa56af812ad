"""The examples in TransformerLens v2.18.0's ``transformer_lens/ActivationCache.py`` docstrings
(class docstring, ``keys``, ``__iter__``, ``accumulated_resid``), ported to SmolLM2 through
``mechlab.compat``: the model for ``tiny-stories-1M`` and, where SmolLM2 differs, the expected output
(marked ``# model:``)."""

import pytest
import torch

from mechlab.compat import HookedTransformer

pytestmark = pytest.mark.smollm2


@torch.no_grad()
def test_class_docstring_direct_logit_attribution(ht_smollm2: HookedTransformer) -> None:
    model = ht_smollm2
    _logits, cache = model.run_with_cache("Why did the chicken cross the")
    residual_stream, labels = cache.decompose_resid(return_labels=True, mode="attn")
    assert labels[0:3] == ["embed", "0_attn_out", "1_attn_out"]  # model: rotary, no "pos_embed"
    answer = " road"
    logit_attrs = cache.logit_attrs(residual_stream, answer)
    assert logit_attrs.shape == (1 + model.cfg.n_layers, 1, 6)  # model: 30 attention layers, 6 tokens
    most_important_component_idx = torch.argmax(logit_attrs)
    assert labels[most_important_component_idx // 6].endswith("_attn_out")
    # With the MLPs too, the parts add up to the logit of " road" at every position.
    everything = cache.logit_attrs(cache.decompose_resid(), answer)
    road = model.to_single_token(answer)
    torch.testing.assert_close(everything.sum(0)[0], _logits[0, :, road], atol=1e-3, rtol=1e-4)


@torch.no_grad()
def test_keys_and_iteration_docstrings(ht_smollm2: HookedTransformer) -> None:
    _logits, cache = ht_smollm2.run_with_cache("Some prompt")
    # model: no hook_pos_embed (rotary positions), so the third key is ln1's scale.
    assert list(cache.keys())[0:3] == ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_scale"]
    cache_interesting_names = []
    for key in cache:
        if not key.startswith("blocks.") or key.startswith("blocks.0"):
            cache_interesting_names.append(key)
    assert cache_interesting_names[0:3] == [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.ln1.hook_scale",
    ]


@torch.no_grad()
def test_accumulated_resid_docstring_logit_lens(ht_smollm2: HookedTransformer) -> None:
    model = ht_smollm2
    prompt = "Why did the chicken cross the"
    answer = " road"
    logits, cache = model.run_with_cache(prompt)
    answer_token = model.to_single_token(answer)
    assert answer_token == 3398  # model: SmolLM2's id (tiny-stories' is 2975)
    accum_resid, labels = cache.accumulated_resid(return_labels=True, apply_ln=True)
    last_token_accum = accum_resid[:, 0, -1, :]
    assert last_token_accum.shape == (model.cfg.n_layers + 1, model.cfg.d_model)
    W_U = model.W_U
    layers_logits = last_token_accum @ W_U
    assert layers_logits.shape == (model.cfg.n_layers + 1, model.cfg.d_vocab)
    sorted_indices = torch.argsort(layers_logits, dim=1, descending=True)
    rank_answer = (sorted_indices == answer_token).nonzero(as_tuple=True)[1]
    assert labels[-1] == "final_post" and len(rank_answer) == len(labels)
    # The last row of the lens is the model's own output (SmolLM2 has no unembedding bias).
    torch.testing.assert_close(layers_logits[-1], logits[0, -1], atol=1e-3, rtol=1e-4)
    assert int(rank_answer[-1]) == int((logits[0, -1].argsort(descending=True) == answer_token).nonzero())
