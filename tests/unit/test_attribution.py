"""Attribution patching, path patching and EAP-IG on tiny seeded models."""

import pytest
import torch

import mechlab
from mechlab import Ablation, AnswerLogit, LogitDiff, Site, Sweep, agreement, attribution_patch, patch
from mechlab.interventions.paths import path_patch


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """Attention-only, no normalization: the logits are linear in every last-layer head output."""
    from mechlab.models import toy

    config = {**toy.parse_spec("attn-only-2l"), "normalization_type": None}
    directory = tmp_path_factory.mktemp("linear")
    mechlab.save_toy(toy.build(config, device="cpu", dtype=torch.float32), config, directory)
    return mechlab.load_model(f"toy:{directory}").model


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 50, (2, 7), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 5) % 50
    return clean, corrupted


METRIC = LogitDiff(4, 9)


@pytest.mark.parametrize("kind", ["z", "v", "attn_out"])
def test_atp_is_exact_where_the_metric_is_linear(linear_model, pair, kind) -> None:
    clean, corrupted = pair
    sweep = Sweep(kind, layers=(1,), per_position=kind == "attn_out")
    for direction in ("denoise", "noise"):
        estimate = attribution_patch(linear_model, clean, corrupted, sweep, METRIC, direction=direction)
        actual = patch(linear_model, clean, corrupted, sweep, METRIC, direction=direction)
        torch.testing.assert_close(estimate.values, actual.values, atol=1e-4, rtol=0)
        torch.testing.assert_close(estimate.clean, actual.clean, atol=1e-5, rtol=0)
    assert agreement(estimate, actual)[kind] == pytest.approx(1.0, abs=1e-4)


def test_atp_with_an_ablation_baseline(linear_model, pair) -> None:
    clean, _ = pair
    sites = [Site("z", 1, h) for h in range(4)]
    estimate = attribution_patch(
        linear_model, clean[:1], Ablation("mean"), sites, AnswerLogit(3), direction="noise"
    )
    actual = patch(linear_model, clean[:1], Ablation("mean"), sites, AnswerLogit(3), direction="noise")
    torch.testing.assert_close(estimate.values, actual.values, atol=1e-4, rtol=0)
    assert estimate.corrupted is None and estimate.top(1)[0].sites[0].kind == "z"


def test_atp_resid_mid_uses_the_full_gradient(tiny, pair) -> None:
    clean, corrupted = pair
    sweep = Sweep("resid_mid", per_position=True)
    estimate = attribution_patch(tiny.model, clean, corrupted, sweep, METRIC)
    actual = patch(tiny.model, clean, corrupted, sweep, METRIC)
    # Only the corrupted position moves; a first-order estimate of it must have the right sign.
    changed = actual.delta[:, 3]
    assert torch.all(torch.sign(estimate.delta[:, 3]) == torch.sign(changed))
    assert torch.all(estimate.delta[:, :3].abs() < 1e-6)


def test_agreement_reports_each_kind(tiny, pair) -> None:
    clean, corrupted = pair
    sweeps = [Sweep("z"), Sweep("attn_out")]
    estimate = [attribution_patch(tiny.model, clean, corrupted, s, METRIC) for s in sweeps]
    actual = [patch(tiny.model, clean, corrupted, s, METRIC) for s in sweeps]
    result = agreement(estimate, actual)
    assert [kind for kind, _, _ in result.rows] == ["z", "attn_out"]
    assert result.rows[0][1] == 8 and -1 <= result["z"] <= 1
    assert "Pearson r" in result._repr_html_()
    with pytest.raises(KeyError, match="kinds: z, attn_out"):
        result["mlp_out"]


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


def _reference_path_patch(model, clean, corrupted, sender, receiver):  # type: ignore[no-untyped-def]
    """Wang et al.'s two runs written out with plain hooks, one sender at a time."""
    names = [Site("z", layer) for layer in range(2)] + [receiver.with_(head=None)]
    _, clean_cache = model.run_with_cache(clean, names_filter=[s.hook_name for s in names])
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=[s.hook_name for s in names])
    kept = {}

    def freeze(act: torch.Tensor, site: Site) -> torch.Tensor:
        out = clean_cache[site.hook_name].clone()
        if site.layer == sender.layer:
            out[:, :, sender.head] = corrupted_cache[site.hook_name][:, :, sender.head]
        return out

    def keep(act: torch.Tensor, site: Site) -> None:
        kept["value"] = act.clone()

    with mechlab.hooked(
        model, [(Site("z", 0), freeze), (Site("z", 1), freeze), (receiver.with_(head=None), keep)]
    ):
        model(clean)

    def receive(act: torch.Tensor, site: Site) -> torch.Tensor:
        out = act.clone()
        out[:, :, receiver.head] = kept["value"][:, :, receiver.head]
        return out

    with mechlab.hooked(model, {receiver.with_(head=None): receive}):
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


def _finite_difference(model, tokens, delta, add) -> float:  # type: ignore[no-untyped-def]
    """d metric / d eps of a run where ``add(act, eps * delta)`` feeds one receiver, at eps=0."""
    eps = 1e-2
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad(), mechlab.hooked(model, add(sign * eps * delta)):
            values.append(METRIC(model(tokens)).sum())
    return float((values[0] - values[1]) / (2 * eps)) / tokens.shape[0]


def test_eap_scores_are_edge_derivatives(pair) -> None:
    model = mechlab.load_model("toy:tiny", dtype=torch.float64).model
    clean, corrupted = pair
    scores = mechlab.eap_ig(model, clean, corrupted, METRIC, steps=0)
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    dz = clean_cache[Site("z", 0).hook_name] - corrupted_cache[Site("z", 0).hook_name]
    delta = torch.einsum("bphe,hed->bpd", dz[:, :, 2:3], model.W_O[0][2:3])  # sender a0.h2
    block = model.blocks[1]
    _, run = model.run_with_cache(corrupted)
    resid_pre, resid_mid = run[Site("resid_pre", 1).hook_name], run[Site("resid_mid", 1).hook_name]

    def into_query_of_head_3(shift: torch.Tensor) -> dict:
        q = torch.einsum("bpd,de->bpe", block.ln1(resid_pre + shift), model.W_Q[1, 3]) + model.b_Q[1, 3]

        def hook(act: torch.Tensor, site: Site) -> torch.Tensor:
            out = act.clone()
            out[:, :, 3] = q
            return out

        return {Site("q", 1): hook}

    def into_mlp(shift: torch.Tensor) -> dict:
        with torch.no_grad():
            out = block.mlp(block.ln2(resid_mid + shift))
        return {Site("mlp_out", 1): lambda act, site: out}

    def into_logits(shift: torch.Tensor) -> dict:
        return {Site("resid_post", 1): lambda act, site: act + shift}

    for receiver, add in [("a1.h3<q>", into_query_of_head_3), ("m1", into_mlp), ("logits", into_logits)]:
        expected = _finite_difference(model, corrupted, delta, add)
        assert scores.score("a0.h2", receiver) == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert torch.isnan(torch.tensor(scores.score("a1.h0", "a1.h3<q>")))
    assert not torch.isnan(torch.tensor(scores.score("a1.h0", "m1")))


def test_eap_ig_shapes_and_views(tiny_gqa, pair) -> None:
    clean, corrupted = pair
    scores = mechlab.eap_ig(tiny_gqa.model, clean, corrupted, METRIC, steps=3)
    assert len(scores.senders) == 1 + 2 * (4 + 1)
    assert len(scores.receivers) == 2 * (4 + 2 + 2 + 1) + 1
    assert "a1.h1<k>" in scores.receivers and "a1.h2<k>" not in scores.receivers
    assert scores.n_edges == len(scores.records()) == len(scores.to_dataframe())
    sender, receiver, value = scores.top(1)[0]
    assert scores.score(sender, receiver) == value
    assert "top 20 edges" in scores._repr_html_()
