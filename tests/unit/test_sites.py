import pytest
import torch

from mechlab import Site, SiteError, head_sites, layer_sites
from mechlab.sites import KINDS, LAYER_KINDS, validate


def test_hook_names_follow_hooked_transformer() -> None:
    assert Site("z", 3, 5).hook_name == "blocks.3.attn.hook_z"
    assert Site("resid_pre", 0).hook_name == "blocks.0.hook_resid_pre"
    assert Site("mlp_post", 2).hook_name == "blocks.2.mlp.hook_post"
    assert Site("pattern", 1, 0).hook_name == "blocks.1.attn.hook_pattern"
    assert Site("embed").hook_name == "hook_embed"
    assert Site("ln_final").hook_name == "ln_final.hook_normalized"


@pytest.mark.parametrize("text", ["z.3.5", "resid_pre.4@7", "embed", "pattern.0.1@-1", "mlp_out.-1"])
def test_parse_round_trips(text: str) -> None:
    assert str(Site.parse(text)) == text


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(SiteError, match=r"Unknown site kind 'resid'.*resid_pre.*attn_out"):
        Site("resid", 0)


def test_malformed_string_shows_the_form() -> None:
    with pytest.raises(SiteError, match=r"expected kind\[\.layer\[\.head\]\]\[@pos\]"):
        Site.parse("z/3/5")


def test_head_on_headless_kind_is_rejected() -> None:
    with pytest.raises(SiteError, match="has no head axis"):
        Site("resid_pre", 0, head=2)


def test_layer_kind_needs_layer_and_global_kind_refuses_one() -> None:
    with pytest.raises(SiteError, match="needs a layer"):
        Site("z")
    with pytest.raises(SiteError, match="not per layer"):
        Site("embed", 0)


def test_validate_reports_layer_range(tiny) -> None:
    with pytest.raises(SiteError, match=r"has 2 layers \(valid: 0\.\.1"):
        validate(Site("z", 2), tiny.model)
    assert validate(Site("z", -1), tiny.model) == Site("z", 1)


def test_validate_counts_key_value_heads_for_k_and_v(tiny_gqa) -> None:
    validate(Site("q", 0, 3), tiny_gqa.model)
    with pytest.raises(SiteError, match=r"has 2 key/value heads \(valid: 0\.\.1\)"):
        validate(Site("k", 0, 3), tiny_gqa.model)


def test_validate_rejects_kinds_the_model_lacks(attn_only) -> None:
    with pytest.raises(SiteError, match="attention-only models have no MLP sites"):
        validate(Site("mlp_out", 0), attn_only.model)


def test_every_kind_exists_in_a_model_with_mlps(tiny) -> None:
    _, cache = tiny.model.run_with_cache(torch.tensor([[1, 2, 3]]))
    for kind in KINDS:
        if kind == "pos_embed":
            continue
        site = Site(kind, 0) if kind in LAYER_KINDS else Site(kind)
        assert site.hook_name in cache, kind


def test_index_selects_head_and_position(tiny) -> None:
    act = torch.arange(2 * 5 * 4 * 8).reshape(2, 5, 4, 8)
    assert torch.equal(act[Site("z", 0, head=2, pos=3).index(act)], act[:, 3, 2])
    pattern = torch.zeros(2, 4, 5, 5)
    assert pattern[Site("pattern", 0, head=1, pos=4).index(pattern)].shape == (2, 5)


def test_enumerations(tiny, tiny_gqa) -> None:
    assert layer_sites(tiny.model, "resid_pre") == [Site("resid_pre", 0), Site("resid_pre", 1)]
    assert len(head_sites(tiny.model, "z")) == 8
    assert len(head_sites(tiny_gqa.model, "v")) == 4
