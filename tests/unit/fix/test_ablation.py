"""Directional ablation through hooks: the same model as the weights edited by the bake's rule, and
no change at all for a direction nothing writes."""

import dataclasses
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.fix.ablation import (
    FixSweep,
    ablation_hooks,
    calibrate,
    mean_kl,
    mean_values,
    steering_hooks,
    writer_sites,
)
from mechlab.sites import Site
from tests.tiny_llama import save_tiny_llama

D_MODEL = 32


def _fresh(tmp_path: Path) -> mechlab.LoadedModel:
    directory = save_tiny_llama(tmp_path / "tiny", vocab_size=50, initializer_range=0.1)
    return mechlab.load_model(str(directory))


def _unit(seed: int = 0) -> torch.Tensor:
    u = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


def _logits(model: mechlab.HookedModel, tokens: torch.Tensor, hooks: dict | None = None) -> torch.Tensor:
    with torch.no_grad(), mechlab.hooked(model, hooks or {}):
        return model(tokens)


def test_ablating_the_writers_is_ablating_the_residual_stream_everywhere(tiny_llama, tokens) -> None:
    model, u = tiny_llama.model, _unit()
    seen: dict[Site, torch.Tensor] = {}

    def project(act: torch.Tensor, site: Site) -> torch.Tensor:
        return act - (act @ u)[..., None] * u

    def record(act: torch.Tensor, site: Site) -> None:
        seen[site] = act.detach().clone()

    everywhere = {
        Site(kind, layer): project for layer in range(2) for kind in ("resid_pre", "resid_mid", "resid_post")
    }
    ablated = _logits(model, tokens, ablation_hooks(model, u))
    torch.testing.assert_close(ablated, _logits(model, tokens, everywhere), atol=1e-5, rtol=1e-5)
    assert float((ablated - _logits(model, tokens)).abs().max()) > 1e-3
    sites = [Site(kind, layer) for layer in range(2) for kind in ("resid_pre", "resid_mid", "resid_post")]
    hooks = {**ablation_hooks(model, u)}
    with torch.no_grad(), mechlab.hooked(model, hooks), mechlab.hooked(model, dict.fromkeys(sites, record)):
        model(tokens)
    assert max(float((seen[s] @ u).abs().max()) for s in sites) < 1e-5


def test_the_hooks_match_the_weights_edited_as_bake_edits_them(tmp_path: Path, tokens) -> None:
    """W' = (I - uuᵀ)W for the attention output and MLP down matrices ([d_model, input] in torch as
    in GGUF), e' = e - (e·u)u for each embedding row; the unembedding as it was."""
    loaded = _fresh(tmp_path)
    model, u = loaded.model, _unit(1)
    expected = _logits(model, tokens, ablation_hooks(model, u))
    hf = model.original_model
    assert hf.config.tie_word_embeddings is False
    with torch.no_grad():
        for block in hf.model.layers:
            for weight in (block.self_attn.o_proj.weight, block.mlp.down_proj.weight):
                weight -= torch.outer(u, u @ weight)
        embedding = hf.model.embed_tokens.weight
        embedding -= torch.outer(embedding @ u, u)
    torch.testing.assert_close(_logits(model, tokens), expected, atol=1e-5, rtol=1e-5)


def test_a_direction_nothing_writes_to_changes_no_logit(tmp_path: Path, tokens) -> None:
    model = _fresh(tmp_path).model
    hf = model.original_model
    with torch.no_grad():
        for block in hf.model.layers:
            block.self_attn.o_proj.weight[5] = 0
            block.mlp.down_proj.weight[5] = 0
        hf.model.embed_tokens.weight[:, 5] = 0
    direction = torch.zeros(D_MODEL)
    direction[5] = -3.0
    assert torch.equal(_logits(model, tokens, ablation_hooks(model, direction)), _logits(model, tokens))


def test_only_the_chosen_blocks_are_hooked(tiny_llama) -> None:
    hooks = ablation_hooks(tiny_llama.model, _unit(), layers=[1], embeddings=False)
    assert set(hooks) == {Site("attn_out", 1), Site("mlp_out", 1)}


def test_bad_directions_and_layers_are_refused(tiny_llama) -> None:
    model = tiny_llama.model
    with pytest.raises(mechlab.InputError, match=r"shape \(31,\); this model's residual stream is 32 wide"):
        ablation_hooks(model, torch.ones(31))
    with pytest.raises(mechlab.InputError, match=r"Layer\(s\) \[2\] out of range: the model has 2 blocks"):
        ablation_hooks(model, torch.ones(32), layers=[0, 2])
    with pytest.raises(mechlab.InputError, match="non-zero"):
        ablation_hooks(model, torch.zeros(32))
    with pytest.raises(mechlab.InputError, match="32 wide"):
        steering_hooks(model, Site("resid_post", 0), torch.ones(8))


def test_steering_adds_the_vector_as_given(tiny_llama, tokens) -> None:
    model = tiny_llama.model
    seen: dict[Site, torch.Tensor] = {}
    vector = 3 * _unit(2)
    site = Site("resid_post", 0)

    def record(act: torch.Tensor, s: Site) -> None:
        seen[s] = act.detach().clone()

    with torch.no_grad(), mechlab.hooked(model, {site: record}):
        model(tokens)
    clean = seen[site]
    with (
        torch.no_grad(),
        mechlab.hooked(model, steering_hooks(model, site, vector)),
        mechlab.hooked(model, {site: record}),
    ):
        model(tokens)
    torch.testing.assert_close(seen[site] - clean, vector.expand_as(clean), atol=1e-5, rtol=1e-5)


def test_mean_kl_is_zero_for_equal_distributions_and_known_otherwise() -> None:
    p = torch.log_softmax(torch.tensor([[0.0, 0.0]]), -1)
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    assert mean_kl(p, p) == 0.0
    assert mean_kl(p, q) == pytest.approx(
        0.5 * (torch.log(torch.tensor(0.5 / 0.9)) + torch.log(torch.tensor(0.5 / 0.1))).item()
    )


def test_the_sweep_summary_reports_the_fall_and_the_cost() -> None:
    sweep = FixSweep(
        site=Site("resid_post", 3),
        unit=2.0,
        strengths=(-1.0, 0.0, 1.0),
        behaviour="logit(' she') − logit(' he')",
        gap=torch.tensor([[-2.0, -1.0], [1.0, -1.0], [3.0, 2.0]]),
        clean=torch.tensor([1.0, -1.0]),
        ablated=torch.tensor([0.1, -0.1]),
        kl=torch.tensor([0.2, 0.0, 0.3]),
        ablated_kl=0.01,
        n_neutral=400,
    )
    assert (
        "mean |gap| 1.000 clean, 0.100 with the direction ablated (+90% fall) at a KL of 0.0100"
        in sweep.summary()
    )
    assert "from -1.500 (-1σ) to +2.500 (+1σ)" in sweep.summary()
    assert len(sweep.plot().axes) == 2


def test_mean_ablation_keeps_each_writers_constant_along_the_direction(tiny_llama, tokens) -> None:
    model, u = tiny_llama.model, _unit(3)
    values = {site: 0.1 * (i + 1) for i, site in enumerate(writer_sites(model))}
    seen: dict[Site, torch.Tensor] = {}

    def record(act: torch.Tensor, site: Site) -> None:
        seen[site] = act.detach().clone()

    sites = [Site("resid_mid", 1), Site("resid_post", 1)]
    with (
        torch.no_grad(),
        mechlab.hooked(model, ablation_hooks(model, u, values=values)),
        mechlab.hooked(model, dict.fromkeys(sites, record)),
    ):
        model(tokens)
    # The stream along u is the sum of the constants written so far, at every position.
    torch.testing.assert_close(seen[sites[0]] @ u, torch.full((2, 12), 0.1 + 0.2 + 0.3 + 0.4))
    torch.testing.assert_close(seen[sites[1]] @ u, torch.full((2, 12), sum(values.values())))


def test_mean_ablation_hooks_match_the_weights_with_the_biases_bake_adds(tmp_path: Path, tokens) -> None:
    """Mean ablation in the weights: W' = (I - uuᵀ)W plus the bias μu on each output matrix, and
    e' = e - (e·u)u + μu for each embedding row."""
    loaded = _fresh(tmp_path)
    model, u = loaded.model, _unit(1)
    values = {site: float(v) for site, v in zip(writer_sites(model), torch.linspace(-1, 1, 5), strict=True)}
    expected = _logits(model, tokens, ablation_hooks(model, u, values=values))
    hf = model.original_model
    with torch.no_grad():
        for layer, block in enumerate(hf.model.layers):
            for kind, linear in (("attn_out", block.self_attn.o_proj), ("mlp_out", block.mlp.down_proj)):
                linear.weight -= torch.outer(u, u @ linear.weight)
                linear.bias = torch.nn.Parameter(values[Site(kind, layer)] * u)
        embedding = hf.model.embed_tokens.weight
        embedding -= torch.outer(embedding @ u - values[Site("embed")], u)
    torch.testing.assert_close(_logits(model, tokens), expected, atol=1e-5, rtol=1e-5)
    assert float((expected - _logits(model, tokens, ablation_hooks(model, u))).abs().max()) > 1e-3


def test_mean_values_are_the_writers_mean_component_after_bos(tiny_llama) -> None:
    model, u = tiny_llama.model, _unit(4)
    texts = [torch.tensor([1, 7, 9, 3, 4]), torch.tensor([1, 22, 5])]
    values = mean_values(model, u, texts, layers=[1])
    assert list(values) == [Site("embed"), Site("attn_out", 1), Site("mlp_out", 1)]
    seen: dict[Site, list[torch.Tensor]] = {site: [] for site in values}

    def record(act: torch.Tensor, site: Site) -> None:
        seen[site].append(act[0, 1:] @ u)

    with torch.no_grad(), mechlab.hooked(model, dict.fromkeys(values, record)):
        for text in texts:
            model(text[None])
    for site, value in values.items():
        assert value == pytest.approx(float(torch.cat(seen[site]).mean()), rel=1e-5, abs=1e-7)
    with pytest.raises(mechlab.InputError, match="not among the ablated writers"):
        ablation_hooks(model, u, layers=[0], values=values)
    with pytest.raises(mechlab.InputError, match="not finite"):
        ablation_hooks(model, u, values={Site("embed"): float("nan")})


@dataclasses.dataclass
class TokenGap:
    """logit(a) - logit(b) after each prompt of token ids (the tiny Llama has no tokenizer)."""

    prompts: torch.Tensor
    a: int = 3
    b: int = 4

    def measure(self, model: mechlab.HookedModel, hooks: dict | None = None) -> torch.Tensor:
        logits = _logits(model, self.prompts, hooks)[:, -1]
        return logits[:, self.a] - logits[:, self.b]


def test_calibration_brings_the_behaviours_mean_to_zero(tiny_llama, tokens) -> None:
    model, u = tiny_llama.model, _unit(5)
    behaviour = TokenGap(tokens)
    values = mean_values(model, u, [tokens[0]])
    before = float(behaviour.measure(model, ablation_hooks(model, u, values=values)).mean())
    calibrated = calibrate(model, u, values, behaviour)
    after = float(behaviour.measure(model, ablation_hooks(model, u, values=calibrated)).mean())
    assert abs(before) > 1e-3 and abs(after) < 1e-3
    last = Site("mlp_out", 1)
    assert {s: v for s, v in calibrated.items() if s != last} == {
        s: v for s, v in values.items() if s != last
    }
