"""Integrated Gradients, gradient × input, occlusion and their quadrature, on tiny models with
answers known in closed form."""

import pytest
import torch

import mechlab
from mechlab.attribution.integrated_gradients import (
    gradient_x_input,
    integrated_gradients,
    layer_integrated_gradients,
)
from mechlab.attribution.occlusion import occlusion
from mechlab.attribution.path_integral import path_integral
from mechlab.attribution.quadrature import allocate, quadrature
from mechlab.hooks import active_hook_count
from mechlab.metrics import AnswerLogit, AnswerLogProb, LogitDiff
from mechlab.targets import Target
from mechlab.toy import model as toy


@pytest.fixture(scope="module")
def linear_model() -> object:
    """One attention-only layer, no norm, query and key weights zero: attention is uniform over the
    causal prefix whatever the input, so every logit is an affine function of the embeddings."""
    config = dict(
        n_layers=1,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_vocab=20,
        n_ctx=8,
        attn_only=True,
        normalization_type=None,
        act_fn="gelu",
        seed=3,
    )
    model = toy.build(config, device="cpu", dtype=torch.float32)
    model.enable_compatibility_mode(no_processing=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".q." in name or ".k." in name:
                param.zero_()
    return model.eval()


def analytic_gradient(model: object, n_pos: int, answer: int) -> torch.Tensor:
    """∂ logit[answer] / ∂ embedding_j at the last position: W_U for j = last, plus the uniform
    attention's share (1/n) Σ_h W_V[h] W_O[h] W_U for every j."""
    w_u = model.W_U[:, answer]
    through_heads = sum(model.W_V[0, h] @ model.W_O[0, h] for h in range(2)) @ w_u / n_pos
    grad = through_heads.expand(n_pos, -1).clone()
    grad[-1] += w_u
    return grad


def test_ig_on_an_affine_model_is_input_times_weight(linear_model: object) -> None:
    tokens = torch.tensor([[3, 7, 1, 12, 5]])
    embeddings = linear_model.W_E[tokens[0]].detach()
    expected = (embeddings * analytic_gradient(linear_model, 5, 4)).sum(-1)
    for rule in ("gauss-legendre", "riemann-middle", "adaptive"):
        result = integrated_gradients(
            linear_model, tokens, AnswerLogit(4), baseline="zeros", steps=8, rule=rule, keep_first=False
        )
        torch.testing.assert_close(result.scores, expected, atol=1e-5, rtol=1e-5)
        assert result.completeness_error < 1e-5
    gxi = gradient_x_input(linear_model, tokens, AnswerLogit(4), baseline="zeros", keep_first=False)
    torch.testing.assert_close(gxi.scores, expected, atol=1e-5, rtol=1e-5)


def test_baseline_token_and_keep_first(linear_model: object) -> None:
    tokens = torch.tensor([[3, 7, 1, 12, 5]])
    delta = (linear_model.W_E[tokens[0]] - linear_model.W_E[0]).detach()
    expected = (delta * analytic_gradient(linear_model, 5, 4)).sum(-1)
    expected[0] = 0.0
    result = integrated_gradients(
        linear_model, tokens, AnswerLogit(4), baseline=0, steps=4, rule="gauss-legendre"
    )
    torch.testing.assert_close(result.scores, expected, atol=1e-5, rtol=1e-5)
    assert result.baseline == "'#0'"


def test_sundararajan_example_through_the_path_integral() -> None:
    def fn(a: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.relu(a[:, 0]) - 1 - torch.relu(a[:, 1]))

    x, b = torch.tensor([[3.0, 1.0]]), torch.zeros(1, 2)
    ig, _, _ = path_integral(fn, x, b, steps=32, batch_size=8, rule="adaptive", tolerance=1e-9)
    torch.testing.assert_close(ig, torch.tensor([1.5, -0.5], dtype=torch.float64))
    odd, _, _ = path_integral(fn, x, b, steps=7, batch_size=8, rule="riemann-middle", tolerance=1.0)
    assert abs(float(odd.sum()) - 1.0) > 0.05  # the kink at α = 1/2 defeats a coarse fixed rule


def test_completeness_on_a_nonlinear_model(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    target = LogitDiff(3, 9)
    result = integrated_gradients(tiny.model, tokens[0], target, baseline=0)
    assert result.completeness_error < 0.01
    assert 0 < result.steps <= 128
    with torch.no_grad():
        assert abs(result.value - float(target(tiny.model(tokens[:1]))[0])) < 1e-5
    assert result.scores[0] == 0.0  # the first token is held


def test_layer_ig_completeness_and_head_slices(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    model, target = tiny.model, AnswerLogProb(7, pos=5)
    resid = layer_integrated_gradients(model, tokens[0], target, mechlab.Site("resid_pre", 1), baseline=0)
    assert resid.scores.shape == (12,) and resid.completeness_error < 0.01
    assert resid.scores[6:].abs().max() < 1e-6  # positions after the target cannot matter
    head = layer_integrated_gradients(model, tokens[0], target, mechlab.Site("z", 0, head=2), baseline=0)
    assert head.scores.shape == (12, 4)
    assert head.scores[:, [0, 1, 3]].abs().max() == 0 and head.scores[:, 2].abs().max() > 0
    assert head.completeness_error < 0.01


def test_occlusion_matches_manual_replacement(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    model, target = tiny.model, AnswerLogit(11)
    result = occlusion(model, tokens[0], target, replacement=0)
    with torch.no_grad():
        clean = float(target(model(tokens[:1]))[0])
        edited = tokens[:1].clone()
        edited[0, 4] = 0
        assert abs(float(result.scores[4]) - (clean - float(target(model(edited))[0]))) < 1e-5
    assert result.scores[0] == 0.0 and result.completeness_error is None
    dropped = occlusion(model, tokens[0], target, mode="drop", keep_first=False)
    with torch.no_grad():
        without_2 = torch.cat([tokens[:1, :2], tokens[:1, 3:]], dim=1)
        assert abs(float(dropped.scores[2]) - (clean - float(target(model(without_2))[0]))) < 1e-5


def test_inputs_are_not_mutated_and_hooks_are_removed(
    tiny: mechlab.LoadedModel, tokens: torch.Tensor
) -> None:
    model = tiny.model
    before_tokens = tokens.clone()
    baseline = torch.randn(12, 32)
    before_baseline = baseline.clone()
    integrated_gradients(model, tokens[0], AnswerLogit(2), baseline=baseline, steps=4, rule="gauss-legendre")
    assert torch.equal(tokens, before_tokens) and torch.equal(baseline, before_baseline)

    def broken(logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        integrated_gradients(model, tokens[0], Target(broken, "broken"), baseline=0, steps=4)
    assert active_hook_count(model) == 0


def test_bad_arguments_explain_themselves(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    model = tiny.model
    with pytest.raises(mechlab.InputError, match="no tokenizer"):
        integrated_gradients(model, tokens[0], AnswerLogit(1))  # baseline="pad" needs a tokenizer
    with pytest.raises(mechlab.InputError, match="shape"):
        integrated_gradients(model, tokens[0], AnswerLogit(1), baseline=torch.zeros(3, 32))
    with pytest.raises(mechlab.InputError, match="steps"):
        integrated_gradients(model, tokens[0], AnswerLogit(1), baseline=0, steps=0)
    with pytest.raises(mechlab.InputError, match="one prompt"):
        integrated_gradients(model, tokens, AnswerLogit(1), baseline=0)
    with pytest.raises(mechlab.InputError, match="vocabulary"):
        integrated_gradients(model, tokens[0], 999, baseline=0)
    with pytest.raises(mechlab.InputError, match="reads position 12, but the prompt has 12 tokens"):
        integrated_gradients(model, tokens[0], AnswerLogProb(1, pos=12), baseline=0)
    with pytest.raises(mechlab.InputError, match="single token, and keep_first=True"):
        gradient_x_input(model, tokens[0, :1], AnswerLogit(1), baseline=0)
    alone = integrated_gradients(model, tokens[0, :1], AnswerLogit(1), baseline=0, steps=8, keep_first=False)
    assert alone.completeness_error < 0.01 and alone.scores[0] != 0
    with pytest.raises(mechlab.InputError, match=r"resid_pre\.1@20 names position 20"):
        layer_integrated_gradients(model, tokens[0], AnswerLogit(1), mechlab.Site("resid_pre", 1, pos=20))
    with pytest.raises(mechlab.InputError, match="reads position -13"):
        occlusion(model, tokens[0], AnswerLogit(1, pos=-13), replacement=0)
    with pytest.raises(mechlab.InputError, match="batch_size"):
        occlusion(model, tokens[0], AnswerLogit(1), replacement=0, batch_size=0)


def test_quadrature_rules() -> None:
    for rule in ("gauss-legendre", "riemann-middle", "riemann-trapezoid"):
        alphas, weights = quadrature(9, rule)
        assert abs(float(weights.sum()) - 1) < 1e-12 and 0 <= float(alphas.min()) <= float(alphas.max()) <= 1
    alphas, weights = quadrature(5, "gauss-legendre")
    assert abs(float((weights * alphas**9).sum()) - 0.1) < 1e-12  # exact to degree 2·5 − 1
    counts = allocate(torch.tensor([0.0, 10.0, 0.5, 2.0]), 20)
    assert int(counts.sum()) == 20 and int(counts.min()) >= 1 and int(counts.argmax()) == 1
    with pytest.raises(mechlab.InputError, match="at least one node per cell"):
        allocate(torch.ones(5), 4)
