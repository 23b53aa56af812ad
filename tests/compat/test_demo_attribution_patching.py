"""TransformerLens v2.18.0 ``demos/Attribution_Patching_Demo.ipynb``, ported to SmolLM2 through
``mechlab.compat``.

The demo builds its forward and backward caches by hand, keyed by ``hook.name`` (cell 18), then
reads them through ``ActivationCache`` helpers: the test of HookedTransformer's hook names. Each test
names the notebook cells it runs. Changed from the notebook, and only this: the import line, the
model, constants the model dictates (``# model:``), sizes cut for 2 CPU cores (``# size:``), plots
turned into assertions. Model-caused: ``hook_k``/``hook_v`` have 3 key/value heads, so the demo's
``(layer head_index)`` stacks of keys and values (cells 29, 48) use ``n_key_value_heads``, and the
head-path attribution (cells 31-37), which pairs per-query-head ``W_K``/``W_V`` with per-key/value-head
gradients, runs for queries only. Not run: cells 43, 45 and 47 (every-block and every-head activation
patching, 1,350+ forward passes).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import einops
import pytest
import torch
from fancy_einsum import einsum

from mechlab.compat import ActivationCache, HookedTransformer

pytestmark = pytest.mark.smollm2

PROMPTS = [
    "When John and Mary went to the shops, John gave the bag to",
    "When John and Mary went to the shops, Mary gave the bag to",
]  # size: the demo's first 2 of 8 prompts
ANSWERS = [(" Mary", " John"), (" John", " Mary")]


@dataclass
class Run:
    model: HookedTransformer
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    clean_value: float
    corrupted_value: float
    clean_cache: ActivationCache
    clean_grad_cache: ActivationCache
    corrupted_cache: ActivationCache
    corrupted_grad_cache: ActivationCache


@pytest.fixture(scope="module")
def run(ht_smollm2: HookedTransformer) -> Iterator[Run]:
    """Cells 12-18: the IOI metric and the hand-built forward and backward caches."""
    model = ht_smollm2
    model.set_use_attn_result(True)
    clean_tokens = model.to_tokens(PROMPTS)
    corrupted_tokens = clean_tokens[[(i + 1 if i % 2 == 0 else i - 1) for i in range(len(clean_tokens))]]
    answer_token_indices = torch.tensor(
        [[model.to_single_token(ANSWERS[i][j]) for j in range(2)] for i in range(len(ANSWERS))],
        device=model.cfg.device,
    )

    def get_logit_diff(logits, answer_token_indices=answer_token_indices):  # type: ignore[no-untyped-def]
        if len(logits.shape) == 3:
            logits = logits[:, -1, :]
        correct_logits = logits.gather(1, answer_token_indices[:, 0].unsqueeze(1))
        incorrect_logits = logits.gather(1, answer_token_indices[:, 1].unsqueeze(1))
        return (correct_logits - incorrect_logits).mean()

    with torch.no_grad():
        clean_logit_diff = get_logit_diff(model(clean_tokens), answer_token_indices).item()
        corrupted_logit_diff = get_logit_diff(model(corrupted_tokens), answer_token_indices).item()
    CLEAN_BASELINE = clean_logit_diff
    CORRUPTED_BASELINE = corrupted_logit_diff

    def ioi_metric(logits, answer_token_indices=answer_token_indices):  # type: ignore[no-untyped-def]
        return (get_logit_diff(logits, answer_token_indices) - CORRUPTED_BASELINE) / (
            CLEAN_BASELINE - CORRUPTED_BASELINE
        )

    filter_not_qkv_input = lambda name: "_input" not in name  # noqa: E731

    def get_cache_fwd_and_bwd(model, tokens, metric):  # type: ignore[no-untyped-def]
        model.reset_hooks()
        cache = {}

        def forward_cache_hook(act, hook):  # type: ignore[no-untyped-def]
            cache[hook.name] = act.detach()

        model.add_hook(filter_not_qkv_input, forward_cache_hook, "fwd")
        grad_cache = {}

        def backward_cache_hook(act, hook):  # type: ignore[no-untyped-def]
            grad_cache[hook.name] = act.detach()

        model.add_hook(filter_not_qkv_input, backward_cache_hook, "bwd")
        value = metric(model(tokens))
        value.backward()
        model.reset_hooks()
        return value.item(), ActivationCache(cache, model), ActivationCache(grad_cache, model)

    try:
        clean_value, clean_cache, clean_grad_cache = get_cache_fwd_and_bwd(model, clean_tokens, ioi_metric)
        corrupted_value, corrupted_cache, corrupted_grad_cache = get_cache_fwd_and_bwd(
            model, corrupted_tokens, ioi_metric
        )
        model.zero_grad(set_to_none=True)
        yield Run(
            model,
            clean_tokens,
            corrupted_tokens,
            clean_value,
            corrupted_value,
            clean_cache,
            clean_grad_cache,
            corrupted_cache,
            corrupted_grad_cache,
        )
    finally:
        model.set_use_attn_result(False)
        model.reset_hooks()


def swapped_position(run: Run) -> int:
    return int((run.clean_tokens[0] != run.corrupted_tokens[0]).nonzero())


def test_cells_14_to_18_caches_keyed_by_hook_name(run: Run) -> None:
    assert run.clean_value == pytest.approx(1.0, abs=1e-5)
    assert run.corrupted_value == pytest.approx(0.0, abs=1e-5)
    keys = set(run.clean_cache.keys())
    assert {
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.29.attn.hook_result",
        "ln_final.hook_scale",
    } <= keys
    assert not any(key.endswith(("hook_in", "hook_out")) for key in keys)  # no bridge-only names
    assert set(run.corrupted_grad_cache.keys()) <= keys
    assert "blocks.3.hook_resid_pre" in run.corrupted_grad_cache.keys()


def test_cell_20_attention_attribution(run: Run) -> None:
    model = run.model
    attention_stack = torch.stack([run.clean_cache["pattern", l] for l in range(model.cfg.n_layers)], dim=0)  # noqa: E741
    attention_grad_stack = torch.stack(
        [run.clean_grad_cache["pattern", l] for l in range(model.cfg.n_layers)],  # noqa: E741
        dim=0,
    )
    attention_attr = attention_grad_stack * attention_stack
    attention_attr = einops.rearrange(
        attention_attr, "layer batch head_index dest src -> batch layer head_index dest src"
    )
    pos = run.clean_tokens.shape[1]
    assert attention_attr.shape == (len(PROMPTS), model.cfg.n_layers, model.cfg.n_heads, pos, pos)
    assert float(attention_attr.abs().sum()) > 0


def test_cells_25_to_27_residual_layer_and_head_attribution(run: Run) -> None:
    model = run.model
    clean_cache, corrupted_cache, corrupted_grad_cache = (
        run.clean_cache,
        run.corrupted_cache,
        run.corrupted_grad_cache,
    )
    # Cell 25
    clean_residual, residual_labels = clean_cache.accumulated_resid(-1, incl_mid=True, return_labels=True)
    corrupted_residual = corrupted_cache.accumulated_resid(-1, incl_mid=True, return_labels=False)
    corrupted_grad_residual = corrupted_grad_cache.accumulated_resid(-1, incl_mid=True, return_labels=False)
    residual_attr = einops.reduce(
        corrupted_grad_residual * (clean_residual - corrupted_residual),
        "component batch pos d_model -> component pos",
        "sum",
    )
    # Cell 26
    clean_layer_out, labels = clean_cache.decompose_resid(-1, return_labels=True)
    corrupted_layer_out = corrupted_cache.decompose_resid(-1, return_labels=False)
    corrupted_grad_layer_out = corrupted_grad_cache.decompose_resid(-1, return_labels=False)
    layer_out_attr = einops.reduce(
        corrupted_grad_layer_out * (clean_layer_out - corrupted_layer_out),
        "component batch pos d_model -> component pos",
        "sum",
    )
    # Cell 27
    clean_head_out = clean_cache.stack_head_results(-1, return_labels=False)
    corrupted_head_out = corrupted_cache.stack_head_results(-1, return_labels=False)
    corrupted_grad_head_out = corrupted_grad_cache.stack_head_results(-1, return_labels=False)
    head_out_attr = einops.reduce(
        corrupted_grad_head_out * (clean_head_out - corrupted_head_out),
        "component batch pos d_model -> component pos",
        "sum",
    )
    sum_head_out_attr = einops.reduce(
        head_out_attr,
        "(layer head) pos -> layer head",
        "sum",
        layer=model.cfg.n_layers,
        head=model.cfg.n_heads,
    )
    swapped = swapped_position(run)
    # Before the swapped name the two runs are identical: nothing to attribute there.
    for attr in (residual_attr, layer_out_attr, head_out_attr):
        assert float(attr[:, :swapped].abs().max()) == 0.0
    # The embedding is the residual stream entering layer 0 (rotary: no positional embedding).
    assert residual_labels[0] == "0_pre" and labels[0] == "embed"
    torch.testing.assert_close(residual_attr[0], layer_out_attr[0])
    # A layer's attention output is the sum of its heads' results (no b_O): so are the attributions.
    attn_rows = [labels.index(f"{layer}_attn_out") for layer in range(model.cfg.n_layers)]
    per_layer = einops.reduce(head_out_attr, "(layer head) pos -> layer pos", "sum", layer=model.cfg.n_layers)
    torch.testing.assert_close(per_layer, layer_out_attr[attn_rows], atol=1e-4, rtol=1e-3)
    assert sum_head_out_attr.shape == (model.cfg.n_layers, model.cfg.n_heads)


def stack_head_vector_from_cache(cache, activation_name: Literal["q", "k", "v", "z"], model):  # type: ignore[no-untyped-def]
    """Cell 29."""
    stacked_head_vectors = torch.stack([cache[activation_name, l] for l in range(model.cfg.n_layers)], dim=0)  # noqa: E741
    stacked_head_vectors = einops.rearrange(
        stacked_head_vectors, "layer batch pos head_index d_head -> (layer head_index) batch pos d_head"
    )
    return stacked_head_vectors


def test_cell_29_head_vector_attribution(run: Run) -> None:
    model = run.model
    for activation_name in ("k", "q", "v", "z"):
        clean_head_vector = stack_head_vector_from_cache(run.clean_cache, activation_name, model)
        corrupted_head_vector = stack_head_vector_from_cache(run.corrupted_cache, activation_name, model)
        corrupted_grad_head_vector = stack_head_vector_from_cache(
            run.corrupted_grad_cache, activation_name, model
        )
        head_vector_attr = einops.reduce(
            corrupted_grad_head_vector * (clean_head_vector - corrupted_head_vector),
            "component batch pos d_head -> component pos",
            "sum",
        )
        # model: keys and values have one head per key/value head.
        heads = model.cfg.n_key_value_heads if activation_name in ("k", "v") else model.cfg.n_heads
        sum_head_vector_attr = einops.reduce(
            head_vector_attr, "(layer head) pos -> layer head", "sum", layer=model.cfg.n_layers, head=heads
        )
        assert sum_head_vector_attr.shape == (model.cfg.n_layers, heads)
        assert float(head_vector_attr[:, : swapped_position(run)].abs().max()) == 0.0


def test_cell_30_head_pattern_attribution(run: Run) -> None:
    model = run.model

    def stack_head_pattern_from_cache(cache):  # type: ignore[no-untyped-def]
        stacked_head_pattern = torch.stack([cache["pattern", l] for l in range(model.cfg.n_layers)], dim=0)  # noqa: E741
        return einops.rearrange(
            stacked_head_pattern,
            "layer batch head_index dest_pos src_pos -> (layer head_index) batch dest_pos src_pos",
        )

    clean_head_pattern = stack_head_pattern_from_cache(run.clean_cache)
    corrupted_head_pattern = stack_head_pattern_from_cache(run.corrupted_cache)
    corrupted_grad_head_pattern = stack_head_pattern_from_cache(run.corrupted_grad_cache)
    head_pattern_attr = einops.reduce(
        corrupted_grad_head_pattern * (clean_head_pattern - corrupted_head_pattern),
        "component batch dest_pos src_pos -> component dest_pos src_pos",
        "sum",
    )
    assert head_pattern_attr.shape[0] == model.cfg.n_layers * model.cfg.n_heads
    assert float(head_pattern_attr[:, : swapped_position(run)].abs().max()) == 0.0


def test_cell_31_head_path_attribution_for_queries(run: Run) -> None:
    model = run.model

    def get_head_vector_grad_input_from_grad_cache(grad_cache, activation_name, layer):  # type: ignore[no-untyped-def]
        vector_grad = grad_cache[activation_name, layer]
        ln_scales = grad_cache["scale", layer, "ln1"]
        attn_layer_object = model.blocks[layer].attn
        if activation_name == "q":
            W = attn_layer_object.W_Q
        elif activation_name == "k":
            W = attn_layer_object.W_K
        elif activation_name == "v":
            W = attn_layer_object.W_V
        else:
            raise ValueError("Invalid activation name")
        return einsum(
            "batch pos head_index d_head, batch pos, head_index d_model d_head -> batch pos head_index d_model",  # noqa: E501
            vector_grad,
            ln_scales.squeeze(-1),
            W,
        )

    # model: queries only (see the module docstring).
    full_vector_grad_input = torch.stack(
        [
            get_head_vector_grad_input_from_grad_cache(run.corrupted_grad_cache, "q", l)
            for l in range(model.cfg.n_layers)  # noqa: E741
        ]
    )[None]
    clean_head_result_stack = run.clean_cache.stack_head_results(-1)
    corrupted_head_result_stack = run.corrupted_cache.stack_head_results(-1)
    diff_head_result = einops.rearrange(
        clean_head_result_stack - corrupted_head_result_stack,
        "(layer head_index) batch pos d_model -> layer batch pos head_index d_model",
        layer=model.cfg.n_layers,
        head_index=model.cfg.n_heads,
    )
    path_attr = einsum(
        "qkv layer_end batch pos head_end d_model, layer_start batch pos head_start d_model -> qkv layer_end head_end layer_start head_start pos",  # noqa: E501
        full_vector_grad_input,
        diff_head_result,
    )
    correct_layer_order_mask = (
        torch.arange(model.cfg.n_layers)[None, :, None, None, None, None]
        > torch.arange(model.cfg.n_layers)[None, None, None, :, None, None]
    )
    zero = torch.zeros(1)
    path_attr = torch.where(correct_layer_order_mask, path_attr, zero)
    assert path_attr.shape == (
        1,
        model.cfg.n_layers,
        model.cfg.n_heads,
        model.cfg.n_layers,
        model.cfg.n_heads,
        run.clean_tokens.shape[1],
    )
    path_attr = path_attr.detach()
    assert float(path_attr[0, 0].abs().max()) == 0.0  # no head feeds layer 0
    assert float(path_attr.abs().max()) > 0.0


def test_cells_40_44_attribution_cache_per_block(run: Run) -> None:
    model = run.model
    attribution_cache_dict = {}
    for key in run.corrupted_grad_cache.cache_dict.keys():
        attribution_cache_dict[key] = run.corrupted_grad_cache.cache_dict[key] * (
            run.clean_cache.cache_dict[key] - run.corrupted_cache.cache_dict[key]
        )
    attr_cache = ActivationCache(attribution_cache_dict, model)

    def get_attr_patch_block_every(attr_cache):  # type: ignore[no-untyped-def]
        resid_pre_attr = einops.reduce(
            attr_cache.stack_activation("resid_pre"), "layer batch pos d_model -> layer pos", "sum"
        )
        attn_out_attr = einops.reduce(
            attr_cache.stack_activation("attn_out"), "layer batch pos d_model -> layer pos", "sum"
        )
        mlp_out_attr = einops.reduce(
            attr_cache.stack_activation("mlp_out"), "layer batch pos d_model -> layer pos", "sum"
        )
        return torch.stack([resid_pre_attr, attn_out_attr, mlp_out_attr], dim=0)

    every_block_attr_patch_result = get_attr_patch_block_every(attr_cache)
    assert every_block_attr_patch_result.shape == (3, model.cfg.n_layers, run.clean_tokens.shape[1])
    # The same numbers as cell 25's accumulated residual attribution (another path through the caches).
    clean_residual = run.clean_cache.accumulated_resid(-1)
    corrupted_residual = run.corrupted_cache.accumulated_resid(-1)
    grad_residual = run.corrupted_grad_cache.accumulated_resid(-1)
    residual_attr = einops.reduce(
        grad_residual * (clean_residual - corrupted_residual), "c batch pos d -> c pos", "sum"
    )
    torch.testing.assert_close(every_block_attr_patch_result[0], residual_attr[:-1])
