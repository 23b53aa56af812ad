"""Weight processing through ``mechlab.compat`` against TransformerLens 2.18's own formulas, and the
per-query-head key/value weights.

``reference_process`` is TransformerLens 2.18's ``HookedTransformer.load_and_process_state_dict``
with its defaults (``fold_layer_norm``, ``center_writing_weights``, ``center_unembed``,
``fold_value_biases`` from ``transformer_lens/HookedTransformer.py`` at tag v2.18.0), restricted to
what a decoder-only LayerNorm or RMSNorm model uses. Every processed weight must equal it.
"""

from pathlib import Path
from typing import Any

import einops
import pytest
import torch
from torch import Tensor

import mechlab
from mechlab.compat import FactoredMatrix, HookedTransformer
from tests.compat.helpers import compat_toy, toy


def reference_process(sd: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """TransformerLens 2.18's default processing of a HookedTransformer state dict (see the module
    docstring). LayerNorm: fold weights and biases, centre reading and writing weights; RMSNorm: fold
    weights only, no centring (2.18 skips ``center_writing_weights`` with a warning)."""
    sd = {k: v.detach().clone().double() for k, v in sd.items()}
    ln = cfg.normalization_type in ("LN", "LNPre")
    gqa = "_" if "blocks.0.attn._W_K" in sd else ""
    n_layers = cfg.n_layers
    for layer in range(n_layers):
        a = f"blocks.{layer}.attn."
        if ln:
            sd[a + "b_Q"] = sd[a + "b_Q"] + (sd[a + "W_Q"] * sd[f"blocks.{layer}.ln1.b"][None, :, None]).sum(
                -2
            )
            for kind in ("K", "V"):
                w, b = f"{a}{gqa}W_{kind}", f"{a}{gqa}b_{kind}"
                sd[b] = sd[b] + (sd[w] * sd[f"blocks.{layer}.ln1.b"][None, :, None]).sum(-2)
            del sd[f"blocks.{layer}.ln1.b"]
        for w in (a + "W_Q", f"{a}{gqa}W_K", f"{a}{gqa}W_V"):
            sd[w] = sd[w] * sd[f"blocks.{layer}.ln1.w"][None, :, None]
            if ln:
                sd[w] -= einops.reduce(sd[w], "head_index d_model d_head -> head_index 1 d_head", "mean")
        del sd[f"blocks.{layer}.ln1.w"]
        m = f"blocks.{layer}.mlp."
        if ln:
            sd[m + "b_in"] = sd[m + "b_in"] + (sd[m + "W_in"] * sd[f"blocks.{layer}.ln2.b"][:, None]).sum(-2)
            del sd[f"blocks.{layer}.ln2.b"]
        sd[m + "W_in"] = sd[m + "W_in"] * sd[f"blocks.{layer}.ln2.w"][:, None]
        if m + "W_gate" in sd:
            sd[m + "W_gate"] = sd[m + "W_gate"] * sd[f"blocks.{layer}.ln2.w"][:, None]
        del sd[f"blocks.{layer}.ln2.w"]
        if ln:
            sd[m + "W_in"] -= einops.reduce(sd[m + "W_in"], "d_model d_mlp -> 1 d_mlp", "mean")
    if ln:
        sd["unembed.b_U"] = sd["unembed.b_U"] + (sd["unembed.W_U"] * sd["ln_final.b"][:, None]).sum(dim=-2)
        del sd["ln_final.b"]
    sd["unembed.W_U"] = sd["unembed.W_U"] * sd["ln_final.w"][:, None]
    del sd["ln_final.w"]
    if ln:
        sd["unembed.W_U"] -= einops.reduce(sd["unembed.W_U"], "d_model d_vocab -> 1 d_vocab", "mean")
        # center_writing_weights (LayerNorm only)
        sd["embed.W_E"] = sd["embed.W_E"] - sd["embed.W_E"].mean(-1, keepdim=True)
        sd["pos_embed.W_pos"] = sd["pos_embed.W_pos"] - sd["pos_embed.W_pos"].mean(-1, keepdim=True)
        for layer in range(n_layers):
            for key in (f"blocks.{layer}.attn.W_O", f"blocks.{layer}.mlp.W_out"):
                sd[key] = sd[key] - sd[key].mean(-1, keepdim=True)
            for key in (f"blocks.{layer}.attn.b_O", f"blocks.{layer}.mlp.b_out"):
                sd[key] = sd[key] - sd[key].mean()
    # center_unembed
    sd["unembed.W_U"] = sd["unembed.W_U"] - sd["unembed.W_U"].mean(-1, keepdim=True)
    sd["unembed.b_U"] = sd["unembed.b_U"] - sd["unembed.b_U"].mean()
    # fold_value_biases
    for layer in range(n_layers):
        a = f"blocks.{layer}.attn."
        b_v = sd[f"{a}{gqa}b_V"]
        if gqa:
            b_v = torch.repeat_interleave(b_v, dim=0, repeats=cfg.n_heads // cfg.n_key_value_heads)
        sd[a + "b_O"] = sd[a + "b_O"] + (b_v[:, :, None] * sd[a + "W_O"]).sum([0, 1])
        sd[f"{a}{gqa}b_V"] = torch.zeros_like(sd[f"{a}{gqa}b_V"])
    return sd


def _llama(directory: Path, **options: Any) -> HookedTransformer:
    return HookedTransformer.from_bridge(mechlab.load_model(str(directory)).model, **options)


NO_PROCESSING = dict(
    fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
)


def _pair(kind: str, llama_dirs: dict[str, Path]) -> tuple[HookedTransformer, HookedTransformer]:
    """The same model unprocessed and with HookedTransformer's default processing."""
    if kind.startswith("toy:"):
        spec = kind.removeprefix("toy:")
        return compat_toy(spec, **NO_PROCESSING), compat_toy(spec)
    return _llama(llama_dirs[kind], **NO_PROCESSING), _llama(llama_dirs[kind])


MODELS = ["toy:tiny", "toy:tiny-gqa", "untied", "tied"]


@pytest.mark.parametrize("kind", MODELS)
def test_processing_equals_transformer_lens_2_18(kind: str, llama_dirs: dict[str, Path]) -> None:
    raw, processed = _pair(kind, llama_dirs)
    expected = reference_process(raw.state_dict(), raw.cfg)
    got = processed.state_dict()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), value, atol=2e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("kind", MODELS)
def test_processing_leaves_logits_unchanged_up_to_the_unembedding_centre(
    kind: str, llama_dirs: dict[str, Path]
) -> None:
    raw, processed = _pair(kind, llama_dirs)
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, after = raw(tokens), processed(tokens)
    # center_unembed subtracts each position's mean logit; nothing else changes the logits.
    torch.testing.assert_close(after, before - before.mean(-1, keepdim=True), atol=1e-5, rtol=1e-5)
    assert (before - before.mean(-1, keepdim=True)).abs().max() > 0.1  # the comparison has teeth


def test_without_centring_the_unembedding_logits_are_equal(llama_dirs: dict[str, Path]) -> None:
    raw = _llama(llama_dirs["tied"], **NO_PROCESSING)
    folded = _llama(llama_dirs["tied"], center_unembed=False)
    tokens = torch.randint(0, 50, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(folded(tokens), raw(tokens), atol=1e-5, rtol=1e-5)


def test_rms_models_are_folded_but_not_centred(llama_dirs: dict[str, Path]) -> None:
    raw, processed = _pair("tied", llama_dirs)
    # RMSNorm does not remove the mean: the writing weights keep theirs (2.18 skips centring).
    torch.testing.assert_close(processed.W_E, raw.W_E)
    torch.testing.assert_close(processed.W_O, raw.W_O)
    assert processed.W_O.mean(-1).abs().max() > 1e-3
    ln1 = raw.blocks[0].ln1.weight
    torch.testing.assert_close(processed.W_Q[0], raw.W_Q[0] * ln1[None, :, None])
    assert torch.all(processed.blocks[0].ln1.weight == 1)
    # The tied embedding is untied by folding: W_E keeps its values, W_U takes ln_final's.
    assert not torch.allclose(processed.W_U, raw.W_E.T)


@pytest.mark.parametrize("kind", ["toy:tiny-gqa", "tied"])
def test_keys_and_values_are_one_per_query_head(kind: str, llama_dirs: dict[str, Path]) -> None:
    model = _pair(kind, llama_dirs)[1]
    n_heads, n_kv = model.cfg.n_heads, model.cfg.n_key_value_heads
    groups = n_heads // n_kv
    assert model.W_K.shape == (model.cfg.n_layers, n_heads, model.cfg.d_model, model.cfg.d_head)
    assert model.b_V.shape == (model.cfg.n_layers, n_heads, model.cfg.d_head)
    compact = model.blocks[1].attn._W_V
    assert compact.shape == (n_kv, model.cfg.d_model, model.cfg.d_head)
    for head in range(n_heads):
        assert torch.equal(model.W_V[1, head], compact[head // groups])  # Llama's repeat_kv grouping
        assert torch.equal(model.blocks[1].attn.W_K[head], model.blocks[1].attn._W_K[head // groups])
    ov = model.W_V @ model.W_O
    assert ov.shape == (model.cfg.n_layers, n_heads, model.cfg.d_model, model.cfg.d_model)
    qk = FactoredMatrix(model.W_Q, model.W_K.transpose(-1, -2))
    torch.testing.assert_close(qk.AB, model.QK.AB)


def test_missing_biases_are_zeros_as_in_hooked_transformer(llama_dirs: dict[str, Path]) -> None:
    model = _pair("tied", llama_dirs)[1]
    cfg = model.cfg
    assert model.b_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head)
    assert model.b_O.shape == (cfg.n_layers, cfg.d_model)
    assert model.b_in.shape == (cfg.n_layers, model.W_in.shape[-1])
    for bias in (model.b_Q, model.b_K, model.b_V, model.b_O, model.b_in, model.b_out):
        assert not torch.any(bias)


def test_parameter_names_are_hooked_transformers() -> None:
    model = compat_toy("tiny-gqa")
    names = [name for name, _ in model.named_parameters()]
    assert [n for n in names if n.startswith("blocks.0.")] == [
        "blocks.0.attn.W_Q",
        "blocks.0.attn._W_K",
        "blocks.0.attn._W_V",
        "blocks.0.attn.W_O",
        "blocks.0.attn.b_Q",
        "blocks.0.attn._b_K",
        "blocks.0.attn._b_V",
        "blocks.0.attn.b_O",
        "blocks.0.mlp.W_in",
        "blocks.0.mlp.W_out",
        "blocks.0.mlp.b_in",
        "blocks.0.mlp.b_out",
    ]
    assert [n for n in names if not n.startswith("blocks")] == [
        "embed.W_E",
        "pos_embed.W_pos",
        "unembed.W_U",
        "unembed.b_U",
    ]
    # Unfolded, the norms keep their parameters (2.18's LayerNorm has w and b).
    unfolded = compat_toy("tiny-gqa", **NO_PROCESSING)
    assert {"blocks.0.ln1.w", "blocks.0.ln1.b", "ln_final.w"} <= set(unfolded.state_dict())


def test_named_parameters_are_views_of_the_weights() -> None:
    model = compat_toy("tiny")
    tokens = torch.arange(8)[None]
    with torch.no_grad():
        before = model(tokens)
        dict(model.named_parameters())["blocks.1.attn.W_Q"][2].mul_(3.0)
        assert not torch.allclose(model(tokens), before)


def test_state_dict_round_trip_loads_the_weights() -> None:
    source, target = compat_toy("tiny-gqa", seed=0), compat_toy("tiny-gqa", seed=5)
    tokens = torch.arange(8)[None]
    with torch.no_grad():
        assert not torch.allclose(source(tokens), target(tokens))
        target.load_state_dict(source.state_dict())
        torch.testing.assert_close(target(tokens), source(tokens))


def test_processing_off_leaves_the_source_weights(llama_dirs: dict[str, Path]) -> None:
    raw = toy("tiny")
    weights = raw.W_E.clone()
    model = HookedTransformer.from_bridge(raw, **NO_PROCESSING)
    assert torch.equal(model.W_E, weights)
    assert not torch.all(model.blocks[0].ln1.weight == 1)


@pytest.mark.smollm2
@torch.no_grad()
def test_smollm2_processing_leaves_logits_unchanged_up_to_the_unembedding_centre(
    smollm2: mechlab.LoadedModel, ht_smollm2: HookedTransformer
) -> None:
    tokens = smollm2.model.to_tokens(["When Mary and John went to the store, John gave a drink to"])
    before, after = smollm2.model(tokens), ht_smollm2(tokens)
    # Measured: 2.5e-5 for logits up to 32 (float32 rounding of the folded products).
    torch.testing.assert_close(after, before - before.mean(-1, keepdim=True), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(after.log_softmax(-1), before.log_softmax(-1), atol=1e-4, rtol=1e-5)
    # What was processed: RMSNorm weights folded (now 1), nothing centred but the unembedding.
    assert all(bool(torch.all(block.ln1.weight == 1)) for block in ht_smollm2.blocks)
    torch.testing.assert_close(ht_smollm2.W_E, smollm2.model.W_E)
    assert float(ht_smollm2.W_U.mean(-1).abs().max()) < 1e-6
