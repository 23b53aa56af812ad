"""Path patching on tiny seeded models: a plain-hook reference, freezing, and the sites it refuses."""

import pytest
import torch

import mechlab
from mechlab import LogitDiff, Site, SiteError, Sweep, patch, path_patch
from mechlab.interventions import runner as runner_module


@pytest.fixture(scope="module")
def three_layers() -> torch.nn.Module:
    return mechlab.load_model("toy:tiny,n_layers=3").model


METRIC = LogitDiff(4, 9)


def _reference_path_patch(model, clean, corrupted, sender, receiver, freeze_mlps=False):  # type: ignore[no-untyped-def]
    """Wang et al.'s two runs written out with plain hooks for one head sender: every head output
    (and with ``freeze_mlps`` every MLP output) frozen to the clean run, the sender's corrupted."""
    kinds = ["z", "mlp_out"] if freeze_mlps else ["z"]
    frozen = [Site(kind, layer) for layer in range(model.cfg.n_layers) for kind in kinds]
    names = [s.hook_name for s in [*frozen, receiver.whole]]
    _, clean_cache = model.run_with_cache(clean, names_filter=names)
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=names)
    kept = {}

    def freeze(act: torch.Tensor, site: Site) -> torch.Tensor:
        out = clean_cache[site.hook_name].clone()
        if site == sender.whole:
            out[:, :, sender.head] = corrupted_cache[site.hook_name][:, :, sender.head]
        return out

    def keep(act: torch.Tensor, site: Site) -> None:
        kept["value"] = act.clone()

    with torch.no_grad(), mechlab.hooked(model, [*((s, freeze) for s in frozen), (receiver.whole, keep)]):
        model(clean)

    def receive(act: torch.Tensor, site: Site) -> torch.Tensor:
        out = act.clone()
        out[:, :, receiver.head] = kept["value"][:, :, receiver.head]
        return out

    with torch.no_grad(), mechlab.hooked(model, {receiver.whole: receive}):
        return METRIC(model(clean))


@pytest.mark.parametrize("receiver", [Site("q", 1, 2), Site("k", 1, 1), Site("v", 1, 0)])
def test_path_patching_matches_a_plain_hook_implementation(tiny_gqa, pair, receiver) -> None:
    clean, corrupted = pair
    senders = [Site("z", 0, h) for h in range(4)]
    result = path_patch(tiny_gqa.model, clean, corrupted, senders, [receiver], METRIC)
    for i, sender in enumerate(senders):
        expected = _reference_path_patch(tiny_gqa.model, clean, corrupted, sender, receiver)
        torch.testing.assert_close(result.per_prompt[i], expected, atol=1e-5, rtol=0)
    assert result.context == f"senders → {receiver}"


@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_freezing_the_layers_between_sender_and_receiver(three_layers, pair, freeze_mlps) -> None:
    clean, corrupted = pair
    receiver = Site("q", 2, 1)
    senders = [Site("z", layer, head) for layer in (0, 1) for head in range(4)]
    result = path_patch(three_layers, clean, corrupted, senders, [receiver], METRIC, freeze_mlps=freeze_mlps)
    for i, sender in enumerate(senders):
        expected = _reference_path_patch(three_layers, clean, corrupted, sender, receiver, freeze_mlps)
        torch.testing.assert_close(result.per_prompt[i], expected, atol=1e-5, rtol=0)
    assert result.delta.abs().max() > 1e-3
    assert result.context.endswith(", MLPs frozen") == freeze_mlps


def test_path_patching_from_the_same_run_is_a_no_op(tiny, pair) -> None:
    clean, _ = pair
    result = path_patch(tiny.model, clean, clean, "z", [Site("q", 1, 2)], METRIC)
    torch.testing.assert_close(result.values, result.clean.mean().expand(2, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_path_to_logits_from_the_last_layer_is_activation_patching(tiny, pair, direction) -> None:
    clean, corrupted = pair
    sweep = Sweep("z", layers=(1,))
    path = path_patch(tiny.model, clean, corrupted, sweep, "logits", METRIC, direction=direction)
    act = patch(tiny.model, clean, corrupted, sweep, METRIC, direction=direction)
    torch.testing.assert_close(path.values, act.values, atol=1e-5, rtol=0)


def test_senders_after_the_receivers_score_as_the_unpatched_run(tiny, pair) -> None:
    clean, corrupted = pair
    later = path_patch(tiny.model, clean, corrupted, Sweep("z", layers=(1,)), [Site("q", 0, 0)], METRIC)
    torch.testing.assert_close(later.per_prompt, later.clean.expand(1, 4, 2), atol=0, rtol=0)
    # No head output reaches a layer-0 query, so adding that receiver changes nothing, whichever
    # chunk (batch_size=2: one sender per forward) a sender runs in.
    senders = [Site("z", layer, head) for layer in (0, 1) for head in range(4)]
    both = path_patch(
        tiny.model, clean, corrupted, senders, [Site("q", 0, 0), Site("q", 1, 2)], METRIC, batch_size=2
    )
    one = path_patch(tiny.model, clean, corrupted, senders, [Site("q", 1, 2)], METRIC, batch_size=2)
    torch.testing.assert_close(both.per_prompt, one.per_prompt, atol=1e-6, rtol=0)
    assert one.per_prompt[:4].sub(one.clean).abs().max() > 1e-3
    torch.testing.assert_close(one.per_prompt[4:], one.clean.expand(4, 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("senders", "receivers", "freeze_mlps", "match"),
    [
        (Sweep("v", layers=(0,)), "logits", False, r"send from v\.0.*head outputs z of layer 0 are frozen"),
        (Sweep("pattern", layers=(0,)), "logits", False, r"send from pattern.*send from z"),
        (Sweep("mlp_post", layers=(0,)), "logits", True, "send from .*every MLP output is frozen"),
        (Sweep("mlp_pre", layers=(0,)), "logits", False, r"send from mlp_pre\.0.*send from mlp_out"),
        (Sweep("z", layers=(0,)), [Site("z", 1, 0)], False, r"receive at z\.1\.0: it is frozen"),
        (Sweep("z", layers=(0,)), [Site("attn_out", 1)], False, "receive at .*it is frozen"),
        (Sweep("z", layers=(0,)), [Site("mlp_out", 1)], True, "receive at .*it is frozen"),
        (Sweep("z", layers=(0,)), [Site("mlp_out", 1)], False, "receive at .*receive at mlp_pre"),
        (Sweep("z", layers=(0,)), [Site("embed")], False, "receive at embed.*not a component input"),
    ],
)
def test_sites_whose_effect_freezing_erases_are_refused(
    tiny, pair, senders, receivers, freeze_mlps, match
) -> None:
    clean, corrupted = pair
    with pytest.raises(SiteError, match=f"(?s)Path patching cannot {match}"):
        path_patch(tiny.model, clean, corrupted, senders, receivers, METRIC, freeze_mlps=freeze_mlps)
    assert mechlab.active_hook_count(tiny.model) == 0


def test_other_senders_and_receivers_carry_an_effect(tiny, pair) -> None:
    clean, corrupted = pair
    for senders in (
        Sweep("attn_out", layers=(0,)),
        Sweep("mlp_out", layers=(0,)),
        Sweep("resid_post", layers=(0,)),
    ):
        for receivers in ([Site("pattern", 1, 1)], [Site("mlp_pre", 1)], [Site("resid_mid", 1)]):
            result = path_patch(tiny.model, clean, corrupted, senders, receivers, METRIC)
            assert result.delta.abs().max() > 1e-4, (senders, receivers)


def test_prefix_sharing_gives_the_same_path_patching(tiny_llama, pair, monkeypatch) -> None:
    clean, corrupted = pair
    senders = [Site("z", 0, head) for head in range(4)]
    receivers = [Site("q", 1, 2), Site("v", 1, 1, pos=-1)]
    fast = path_patch(tiny_llama.model, clean, corrupted, senders, receivers, METRIC)
    monkeypatch.setattr(runner_module, "STRATEGIES", ("full",))
    slow = path_patch(tiny_llama.model, clean, corrupted, senders, receivers, METRIC)
    assert (fast.mode, slow.mode) == ("prefix", "full")
    torch.testing.assert_close(fast.per_prompt, slow.per_prompt, atol=1e-6, rtol=0)
    assert slow.delta.abs().max() > 1e-5
