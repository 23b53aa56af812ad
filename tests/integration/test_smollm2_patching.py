"""Patching on SmolLM2 with the 20-token IOI pair (see REFERENCES.md)."""

import pytest
import torch

import mechlab
from mechlab import LogitDiff, Site, Sweep
from mechlab.interventions import runner as runner_module

CLEAN = "When Mary and John went to the store after work on Friday, John gave a bottle of milk to"
CORRUPTED = "When Mary and John went to the store after work on Friday, Tom gave a bottle of milk to"


@pytest.fixture(scope="module")
def ioi(smollm2):  # type: ignore[no-untyped-def]
    model = smollm2.model
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    metric = LogitDiff.from_text(model, " Mary", " John")
    heads = mechlab.patch(model, clean, corrupted, "z", metric)
    return model, clean, corrupted, metric, heads


def test_ioi_pair_baselines(ioi) -> None:
    _model, clean, corrupted, _, heads = ioi
    assert clean.shape == corrupted.shape == (1, 20)
    assert heads.clean_mean == pytest.approx(5.99, abs=0.05)
    assert heads.corrupted_mean == pytest.approx(1.78, abs=0.05)


def test_head_patching_finds_the_reference_heads(ioi) -> None:
    *_, heads = ioi
    top = [entry.label for entry in heads.top(7)]
    # REFERENCES.md: 23.3 (0.46), 20.0 (0.29), 29.1 (0.26), 17.4 (0.23), 19.2 (0.20) on a 20-token pair.
    assert top[0] == "z.23.3"
    assert {"z.20.0", "z.29.1", "z.17.4", "z.19.2"} <= set(top)
    assert heads.normalized[23, 3] == pytest.approx(0.67, abs=0.03)


def test_head_patching_matches_transformer_lens_on_a_few_layers(ioi) -> None:
    from transformer_lens import patching

    model, clean, corrupted, metric, heads = ioi
    names = [Site("z", layer).hook_name for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(clean, names_filter=names)
    index = patching.make_df_from_ranges([1, 9], ["layer", "head"])
    index["layer"] = 23
    theirs = patching.generic_activation_patch(
        model,
        corrupted,
        cache,
        lambda logits: metric(logits).mean(),
        patching.layer_head_vector_patch_setter,
        "z",
        index_df=index,
    )
    torch.testing.assert_close(heads.values[23], theirs, atol=1e-4, rtol=0)


@pytest.mark.drift
def test_prefix_sharing_gives_the_same_numbers(ioi, monkeypatch) -> None:
    model, clean, corrupted, metric, heads = ioi
    assert heads.mode == "prefix"  # the 13 shared tokens are computed once
    sweep = Sweep("resid_pre", layers=(0, 14, 29), per_position=True)
    fast = mechlab.patch(model, clean, corrupted, sweep, metric)
    monkeypatch.setattr(runner_module, "STRATEGIES", ("resume", "full"))
    slow = mechlab.patch(model, clean, corrupted, sweep, metric)
    assert (fast.mode, slow.mode) == ("prefix", "resume")
    torch.testing.assert_close(fast.values, slow.values, atol=1e-4, rtol=0)
    embed = Sweep("embed", per_position=True)  # runs from the tokens, with and without the prefix
    monkeypatch.setattr(runner_module, "STRATEGIES", ("prefix", "full"))
    with_prefix = mechlab.patch(model, clean, corrupted, embed, metric)
    monkeypatch.setattr(runner_module, "STRATEGIES", ("full",))
    full = mechlab.patch(model, clean, corrupted, embed, metric)
    assert (with_prefix.mode, full.mode) == ("prefix", "full")
    torch.testing.assert_close(with_prefix.values, full.values, atol=1e-4, rtol=0)
    # Layer 0, the first differing position (13) recovers the clean run exactly; others do nothing.
    assert fast.normalized[0, 13] == pytest.approx(1.0, abs=1e-4)
    assert fast.normalized[0, :13].abs().max() < 1e-6


def test_attribution_patching_agrees_on_head_outputs(ioi) -> None:
    model, clean, corrupted, metric, heads = ioi
    atp = mechlab.attribution_patch(model, clean, corrupted, "z", metric)
    assert mechlab.agreement(atp, heads)["z"] > 0.9
    assert atp.top(1)[0].label == "z.23.3"


def test_path_patching_to_logits_names_the_direct_heads(ioi) -> None:
    model, clean, corrupted, metric, _ = ioi
    senders = [Site("z", 23, h) for h in range(9)] + [Site("z", 29, 1), Site("z", 20, 0)]
    path = mechlab.path_patch(model, clean, corrupted, senders, "logits", metric)
    effect = dict(zip([e.label for e in path.top(11)], [e.effect for e in path.top(11)], strict=True))
    assert effect["z.23.3"] > 0.5 and effect["z.29.1"] > 0.2
    assert abs(effect["z.20.0"]) < 0.1  # 20.0 acts through later heads, not directly on the logits


def test_eap_ig_top_edges(ioi) -> None:
    model, clean, corrupted, metric, _ = ioi
    edges = mechlab.eap_ig(model, clean, corrupted, metric, steps=2)
    assert edges.n_edges > 70_000
    assert ("a23.h3", "logits") in [(s, r) for s, r, _ in edges.top(5)]
