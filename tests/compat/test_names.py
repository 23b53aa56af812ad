"""HookedTransformer's hook names through ``mechlab.compat``: ``hook.name``, caches, ``names_filter``
and the bridge's own names."""

from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.compat import HookedTransformer, utils
from mechlab.compat.names import HookNames, is_ht_name
from tests.compat.helpers import compat_toy

TOKENS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
# HookedTransformer 2.18's hook points for a 2-layer LayerNorm model with MLPs and learned positions
# (hook_attn_in, hook_{q,k,v}_input, hook_mlp_in and hook_result exist but are switched off).
PER_LAYER = [
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "mlp.hook_pre",
    "mlp.hook_post",
]
TOY_NAMES = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"} | {
    f"blocks.{layer}.{name}" for layer in range(2) for name in PER_LAYER
}


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return compat_toy("tiny")


def test_hook_dict_holds_hooked_transformers_hook_points_once(model: HookedTransformer) -> None:
    assert set(model.hook_dict) == TOY_NAMES
    assert len({id(point) for point in model.hook_dict.values()}) == len(TOY_NAMES)
    assert all(point.name == name for name, point in model.hook_dict.items())


def test_hooks_report_hooked_transformer_names_under_any_name(model: HookedTransformer) -> None:
    seen: list[str] = []

    def record(act: torch.Tensor, hook: object) -> None:
        seen.append(hook.name)  # type: ignore[attr-defined]

    model.run_with_hooks(
        TOKENS,
        fwd_hooks=[
            ("blocks.1.hook_resid_pre", record),
            ("blocks.1.hook_in", record),  # the bridge's name for the same hook point
            (utils.get_act_name("z", 0), record),
            ("blocks.0.attn.o.hook_in", record),  # the bridge's name for hook_z
        ],
    )
    assert sorted(seen) == sorted(["blocks.1.hook_resid_pre"] * 2 + ["blocks.0.attn.hook_z"] * 2)
    assert model.blocks[0].hook_resid_pre.name == "blocks.0.hook_resid_pre"
    assert model.blocks[1].attn.hook_z.layer() == 1


def test_a_filter_sees_each_hook_point_once_and_the_cache_is_keyed_by_its_name(
    model: HookedTransformer,
) -> None:
    asked: list[str] = []

    def names_filter(name: str) -> bool:
        asked.append(name)
        return name.endswith("hook_z")

    _, cache = model.run_with_cache(TOKENS, names_filter=names_filter)
    assert sorted(cache.keys()) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert sorted(asked) == sorted(TOY_NAMES)
    _, everything = model.run_with_cache(TOKENS)
    assert set(everything.keys()) == TOY_NAMES


def test_the_bridges_names_still_reach_the_same_tensors(model: HookedTransformer) -> None:
    _, cache = model.run_with_cache(TOKENS, names_filter="blocks.1.hook_in")
    assert list(cache.keys()) == ["blocks.1.hook_resid_pre"]
    assert cache["blocks.1.hook_in"] is cache["blocks.1.hook_resid_pre"]
    assert "blocks.1.hook_out" in model.hook_dict
    assert model.hook_dict["blocks.1.hook_out"] is model.hook_dict["blocks.1.hook_resid_post"]
    _, full = model.run_with_cache(TOKENS)
    torch.testing.assert_close(full["resid_pre", 1], cache["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(full["blocks.0.hook_out"], full["resid_pre", 1])


def test_hook_points_hooked_transformer_lacks_are_cached_when_named(model: HookedTransformer) -> None:
    _, cache = model.run_with_cache(TOKENS, names_filter=["embed.hook_in", "blocks.0.hook_in"])
    assert list(cache.keys()) == ["embed.hook_in", "blocks.0.hook_resid_pre"]
    assert torch.equal(cache["embed.hook_in"], TOKENS)
    assert "embed.hook_in" not in list(model.hook_dict)  # and out of sweeps again


def test_forward_and_backward_caches_keyed_by_hook_name_match_run_with_cache(
    model: HookedTransformer,
) -> None:
    # The Attribution Patching demo's pattern: add_hook with a filter, cache[hook.name] = act.
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    model.reset_hooks()
    model.add_hook(
        lambda n: "_input" not in n, lambda a, hook: acts.__setitem__(hook.name, a.detach()), "fwd"
    )
    model.add_hook(
        lambda n: "_input" not in n, lambda a, hook: grads.__setitem__(hook.name, a.detach()), "bwd"
    )
    model(TOKENS, return_type="loss").backward()
    model.reset_hooks()
    assert set(acts) == TOY_NAMES
    assert set(grads) <= set(acts) and "blocks.0.hook_resid_pre" in grads
    _, cache = model.run_with_cache(TOKENS, return_type="loss", incl_bwd=True)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre_grad"], grads["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(cache["blocks.0.hook_in_grad"], grads["blocks.0.hook_resid_pre"])


def test_stop_at_layer_still_stops(model: HookedTransformer) -> None:
    resid, cache = model.run_with_cache(TOKENS, stop_at_layer=1)
    torch.testing.assert_close(resid, cache["blocks.0.hook_resid_post"])
    assert not any(key.startswith("blocks.1.") for key in cache.keys())


def test_an_unknown_hook_name_says_what_names_look_like(model: HookedTransformer) -> None:
    with pytest.raises(KeyError, match=r"blocks\.\{layer\}\.hook_resid_pre.*blocks\.0\.hook_resid_pre"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_pr", lambda a, hook: None)])
    with pytest.raises(KeyError, match=r"No hook point is named 'blocks\.9\.hook_resid_pre'"):
        model.run_with_cache(TOKENS, names_filter="blocks.9.hook_resid_pre")


def test_switched_off_hook_points_are_refused_when_named(model: HookedTransformer) -> None:
    with pytest.raises(ValueError, match="use_split_qkv_input"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_q_input", lambda a, hook: None)])


def test_rotary_models_have_no_hook_pos_embed(llama_dirs: dict[str, Path]) -> None:
    model = HookedTransformer.from_bridge(mechlab.load_model(str(llama_dirs["tied"])).model)
    assert "hook_pos_embed" not in model.hook_dict
    assert {"blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k"} <= set(model.hook_dict)
    with pytest.raises(KeyError, match="hook_pos_embed"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("hook_pos_embed", lambda a, hook: None)])
    _, cache = model.run_with_cache(TOKENS)
    assert set(cache.keys()) == set(model.hook_dict)
    assert cache["k", 0].shape[-2] == 2  # hook_k stays one per key/value head, as in 2.18


def test_naming_prefers_hooked_transformer_names_and_the_block_level_one() -> None:
    class Point:
        def __init__(self, name: str) -> None:
            self.name = name

    attn_in, resid_pre, own = (
        Point("blocks.0.attn.hook_attn_in"),
        Point("blocks.0.hook_in"),
        Point("x.hook_in"),
    )
    names = HookNames.of(
        [
            ("blocks.0.attn.hook_attn_in", attn_in),
            ("blocks.0.hook_attn_in", attn_in),
            ("blocks.0.hook_in", resid_pre),
            ("blocks.0.hook_resid_pre", resid_pre),
            ("x.hook_in", own),
        ],
        rotary=False,
    )
    assert names.resolve("blocks.0.attn.hook_attn_in") == "blocks.0.hook_attn_in"
    assert names.resolve("blocks.0.hook_in") == "blocks.0.hook_resid_pre"
    assert list(names.points) == ["blocks.0.hook_attn_in", "blocks.0.hook_resid_pre"]
    assert names.resolve("x.hook_in") == "x.hook_in" and "x.hook_in" not in names.points
    assert not is_ht_name("blocks.0.attn.hook_attn_in")
