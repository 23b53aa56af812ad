"""Attribution patching and EAP-IG on tiny seeded models, checked against exact patching and
finite differences."""

import pytest
import torch

import mechlab
from mechlab import (
    Ablation,
    AnswerLogit,
    InputError,
    KLFromReference,
    LogitDiff,
    Site,
    SiteError,
    Sweep,
    agreement,
    attribution_patch,
    patch,
)
from mechlab.interventions import attribution_patching
from mechlab.interventions.scoring import scorer


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """Attention-only, no normalization: the logits are linear in every last-layer head output."""
    from mechlab.toy import model as toy

    config = {**toy.parse_spec("attn-only-2l"), "normalization_type": None}
    directory = tmp_path_factory.mktemp("linear")
    mechlab.save_toy(toy.build(config, device="cpu", dtype=torch.float32), config, directory)
    return mechlab.load_model(f"toy:{directory}").model


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
    estimate = attribution_patch(linear_model, clean[:1], Ablation("mean"), sites, AnswerLogit(3))
    actual = patch(linear_model, clean[:1], Ablation("mean"), sites, AnswerLogit(3))
    assert estimate.direction == actual.direction == "noise"
    torch.testing.assert_close(estimate.values, actual.values, atol=1e-4, rtol=0)
    assert estimate.corrupted is None and estimate.top(1)[0].sites[0].kind == "z"


@pytest.fixture(scope="module")
def tiny64() -> torch.nn.Module:
    return mechlab.load_model("toy:tiny", dtype=torch.float64).model


def test_atp_resid_mid_uses_the_full_gradient(tiny64, pair) -> None:
    clean, corrupted = pair
    estimate = attribution_patch(tiny64, clean, corrupted, Sweep("resid_mid", per_position=True), METRIC)
    _, clean_cache = tiny64.run_with_cache(clean)
    _, corrupted_cache = tiny64.run_with_cache(corrupted)
    for layer in range(2):
        name = Site("resid_mid", layer).hook_name
        delta = (clean_cache[name] - corrupted_cache[name])[:, 3]

        # Moving resid_mid moves both the MLP's input and the residual stream past it: add the
        # change to attn_out (resid_mid = resid_pre + attn_out) and differentiate numerically.
        def shift(eps: float, layer: int = layer, delta: torch.Tensor = delta) -> dict:
            def add(act: torch.Tensor, site: Site) -> torch.Tensor:
                out = act.clone()
                out[:, 3] += eps * delta
                return out

            return {Site("attn_out", layer): add}

        expected = _finite_difference(tiny64, corrupted, shift)
        assert float(estimate.delta[layer, 3]) == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert estimate.delta[layer, :3].abs().max() < 1e-6  # positions before the change
    assert estimate.delta[0, 3].abs() > 1e-3  # (layer 1 is last: its MLP cannot reach position 6)


def test_agreement_is_the_correlation_of_the_changes(tiny, pair) -> None:
    clean, corrupted = pair
    sweeps = [Sweep("z"), Sweep("attn_out")]
    estimate = [attribution_patch(tiny.model, clean, corrupted, s, METRIC) for s in sweeps]
    actual = [patch(tiny.model, clean, corrupted, s, METRIC) for s in sweeps]
    result = agreement(estimate, actual)
    assert [(kind, n) for kind, n, _ in result.rows] == [("z", 8), ("attn_out", 2)]
    for kind, est, act in zip(("z", "attn_out"), estimate, actual, strict=True):
        deltas = torch.stack([est.delta.flatten(), act.delta.flatten()]).double()
        assert result[kind] == pytest.approx(float(torch.corrcoef(deltas)[0, 1]), abs=1e-9)
    assert result["z"] > 0.5  # a 2-layer model is close enough to linear in its head outputs
    assert "Pearson r" in result._repr_html_()
    with pytest.raises(KeyError, match="kinds: z, attn_out"):
        result["mlp_out"]


def test_agreement_refuses_results_of_different_directions_or_metrics(tiny, pair) -> None:
    clean, corrupted = pair
    estimate = attribution_patch(tiny.model, clean, corrupted, "z", METRIC)
    noised = patch(tiny.model, clean, corrupted, "z", METRIC, direction="noise")
    with pytest.raises(InputError, match=r"(?s)one direction and one metric.*direction='noise'"):
        agreement(estimate, noised)
    other = patch(tiny.model, clean, corrupted, "z", LogitDiff(5, 9))
    with pytest.raises(InputError, match="same direction= and metric"):
        agreement(estimate, other)


def test_a_site_the_metric_does_not_depend_on_is_an_error_not_zero(pair) -> None:
    clean, corrupted = pair
    frozen = mechlab.load_model("toy:tiny").model.requires_grad_(False)  # as for inference
    score = scorer(METRIC, clean.shape[1])
    # The bridge computes attention from its own scores, not from hook_attn_scores' output, so
    # with no parameter needing grad the recorded scores are a leaf nothing depends on.
    sites = [Site("attn_scores", 0), Site("z", 0)]
    with pytest.raises(
        SiteError, match=r"(?s)does not depend on the activation at attn_scores\.0.*mechlab\.patch"
    ):
        attribution_patching.forward_backward(frozen, clean, sites, score)
    assert mechlab.active_hook_count(frozen) == 0
    with pytest.raises(InputError, match="not differentiable"):
        attribution_patch(
            frozen, clean, corrupted, "z", lambda logits: (logits[:, -1].argmax(-1) == 4).float()
        )
    # Sites the model reads back get gradients whether or not the parameters need them.
    estimate = attribution_patch(frozen, clean, corrupted, "z", METRIC)
    reference = attribution_patch(mechlab.load_model("toy:tiny").model, clean, corrupted, "z", METRIC)
    torch.testing.assert_close(estimate.values, reference.values, atol=1e-6, rtol=0)


def _finite_difference(model, tokens, shift, metric=METRIC) -> float:  # type: ignore[no-untyped-def]
    """d metric / d eps at eps=0, averaged over prompts, of a run hooked by ``shift(eps)``."""
    eps = 1e-3
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad(), mechlab.hooked(model, shift(sign * eps)):
            values.append(metric(model(tokens)).sum())
    return float((values[0] - values[1]) / (2 * eps)) / tokens.shape[0]


def test_eap_scores_are_edge_derivatives(tiny64, pair) -> None:
    model = tiny64
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
        expected = _finite_difference(model, corrupted, lambda eps, add=add: add(eps * delta))
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


def _sender_delta(model, clean, corrupted, layer: int, head: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``out(clean) − out(corrupted)`` of one head: its z change through its own W_O."""
    name = Site("z", layer).hook_name
    _, clean_cache = model.run_with_cache(clean, names_filter=[name])
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=[name])
    dz = (clean_cache[name] - corrupted_cache[name])[:, :, head]
    return torch.einsum("bpe,ed->bpd", dz, model.W_O[layer, head]).detach()


@pytest.fixture(scope="module")
def tiny_gqa64() -> torch.nn.Module:
    return mechlab.load_model("toy:tiny-gqa", dtype=torch.float64).model


@pytest.mark.parametrize("kind", ["k", "v"])
def test_eap_key_and_value_receivers_under_grouped_query_attention(tiny_gqa64, pair, kind) -> None:
    model, (clean, corrupted) = tiny_gqa64, pair
    scores = mechlab.eap_ig(model, clean, corrupted, METRIC, steps=0)
    delta = _sender_delta(model, clean, corrupted, 0, 2)
    _, run = model.run_with_cache(corrupted)
    resid_pre = run[Site("resid_pre", 1).hook_name]
    weight, bias = (model.W_K, model.b_K) if kind == "k" else (model.W_V, model.b_V)
    for group in range(2):  # 2 key/value heads, each read by 2 of the 4 query heads

        def into_group(eps: float, group: int = group) -> dict:
            moved = model.blocks[1].ln1(resid_pre + eps * delta)
            new = torch.einsum("bpd,de->bpe", moved, weight[1, group]) + bias[1, group]

            def hook(act: torch.Tensor, site: Site) -> torch.Tensor:
                out = act.clone()
                out[:, :, group] = new
                return out

            return {Site(kind, 1): hook}

        expected = _finite_difference(model, corrupted, into_group)
        assert scores.score("a0.h2", f"a1.h{group}<{kind}>") == pytest.approx(expected, rel=1e-4, abs=1e-8)
        assert abs(expected) > 1e-4


def _gradient_score(model, clean, corrupted, metric, alpha: float, delta: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    """``delta · ∂metric/∂resid_final`` (mean over prompts) on the corrupted prompt run from the
    input embedding ``corrupted + alpha (clean − corrupted)``: one point of the IG integral."""
    embed = Site("embed")
    _, clean_cache = model.run_with_cache(clean, names_filter=[embed.hook_name])
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=[embed.hook_name])
    start, end = corrupted_cache[embed.hook_name], clean_cache[embed.hook_name]
    kept = {}

    def leaf(act: torch.Tensor, site: Site) -> torch.Tensor:
        kept["resid"] = act.detach().requires_grad_(True)
        return kept["resid"]

    hooks = [(embed, lambda act, site: start + alpha * (end - start)), (Site("resid_post", 1), leaf)]
    with torch.enable_grad(), mechlab.hooked(model, hooks):
        (grad,) = torch.autograd.grad(metric(model(corrupted)).sum(), kept["resid"])
    return float((delta * grad).sum()) / clean.shape[0]


@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("which", ["per-prompt answers", "KL"])
def test_eap_ig_averages_the_gradient_along_the_path(tiny64, pair, steps, which) -> None:
    model, (clean, corrupted) = tiny64, pair
    with torch.no_grad():
        reference = model(clean)
    metrics = {
        "per-prompt answers": LogitDiff(torch.tensor([4, 5]), torch.tensor([9, 8])),
        "KL": KLFromReference(reference),
    }
    metric = metrics[which]
    scores = mechlab.eap_ig(model, clean, corrupted, metric, steps=steps)
    delta = _sender_delta(model, clean, corrupted, 0, 2)
    alphas = [(i + 0.5) / steps for i in range(steps)]
    points = [_gradient_score(model, clean, corrupted, metric, a, delta) for a in alphas]
    assert scores.score("a0.h2", "logits") == pytest.approx(sum(points) / steps, rel=1e-5, abs=1e-9)
    assert max(points) - min(points) > 1e-4  # the gradient changes along the path
