"""SAE latents as a site kind on the tiny toy: attaching is one call, an unedited round trip is the
identity, and every edit (ablation, clamping, patching, steering, attribution patching) equals the
same edit of the host activation written by hand through the decoder rows."""

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import mechlab
from mechlab import LogitDiff, Site, SiteError, Sweep, hooked, zero_ablation
from mechlab.dictionaries.sae import SAE, SAEConfig
from mechlab.dictionaries.site import SAESite, attach_sae, attached, detach_sae, kind_name
from mechlab.errors import InputError
from mechlab.hooks import differentiable, gradients
from mechlab.interventions.attribution_patching import attribution_patch, pearson
from mechlab.interventions.steering import steer

LAYER, D_SAE = 1, 48
METRIC = LogitDiff(3, 11)


def make_sae(site: str = f"resid_post.{LAYER}", d_in: int = 32, seed: int = 0, **changes: object) -> SAE:
    """A seeded SAE whose latents are sparse but not rare on the toy's activations (about a third
    of them fire), with unit decoder rows so edits move the output visibly."""
    settings: dict[str, object] = {"architecture": "relu", **changes}
    sae = SAE(SAEConfig(d_in=d_in, d_sae=D_SAE, site=site, **settings))  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        decoder = torch.randn(D_SAE, d_in, generator=generator)
        sae.W_dec.copy_(decoder / decoder.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(0.5 * torch.randn(d_in, D_SAE, generator=generator))
        sae.b_enc.copy_(-0.2 + 0.1 * torch.randn(D_SAE, generator=generator))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=generator))
    return sae


@pytest.fixture
def kind(tiny) -> Iterator[SAESite]:
    with attached(tiny.model, make_sae(), name="res") as attached_kind:
        yield attached_kind


def _edited(model, tokens: Tensor, edit) -> Tensor:
    """Logits with ``edit(resid_post.1)`` written by hand at the host hook point."""
    with hooked(model, {Site("resid_post", LAYER): lambda act, site: edit(act)}):
        return model(tokens)


@pytest.mark.parametrize(
    "changes",
    [
        {"architecture": "relu"},
        {"architecture": "topk", "k": 5, "apply_b_dec_to_input": True},
        {"architecture": "jumprelu"},
        {
            "architecture": "relu",
            "normalize_activations": "expected_average_only_in",
            "norm_scaling_factor": 0.3,
        },
        {"architecture": "relu", "normalize_activations": "layer_norm"},
    ],
    ids=["relu", "topk", "jumprelu", "scaled", "layer_norm"],
)
@torch.no_grad()
def test_an_unedited_round_trip_keeps_the_logits_bit_for_bit(tiny, tokens, changes) -> None:
    model = tiny.model
    sae = make_sae(**changes)
    with attached(model, sae, name="res") as kind:
        latents = mechlab.capture(model, tokens, "res.1")["res.1"]
        with hooked(model, {kind.site(): lambda view, site: view.clone()}):
            kept = model(tokens)
    assert torch.equal(kept, model(tokens))
    host = mechlab.capture(model, tokens, "resid_post.1")["resid_post.1"]
    torch.testing.assert_close(latents, sae.encode(host), rtol=0, atol=0)
    assert 0.05 < float((latents > 0).float().mean()) < 0.9  # sparse, yet some latents fire
    # the error term is what the SAE misses: without it, the output would change
    with hooked(model, {Site("resid_post", LAYER): lambda act, site: sae(act)}):
        spliced = model(tokens)
    assert float((spliced - kept).abs().max()) > 1e-2


@torch.no_grad()
def test_a_head_split_host_is_read_flattened(tiny, tokens) -> None:
    model = tiny.model
    sae = make_sae(site="z.0", d_in=4 * 8)
    with attached(model, sae) as kind:
        assert kind.name == "sae_z_0" and kind.host == "z"
        latents = mechlab.capture(model, tokens, kind.site())[kind.site()]
        with hooked(model, {kind.site(): lambda view, site: view.clone()}):
            kept = model(tokens)
        with hooked(model, zero_ablation([kind.site(7)])):
            ablated = model(tokens)
    z = mechlab.capture(model, tokens, "z.0")["z.0"]
    torch.testing.assert_close(latents, sae.encode(z.flatten(2)), rtol=0, atol=0)
    assert torch.equal(kept, model(tokens))

    def by_hand(act: Tensor, site: Site) -> Tensor:
        return act - (latents[..., 7:8] * sae.W_dec[7]).reshape(act.shape)

    with hooked(model, {Site("z", 0): by_hand}):
        expected = model(tokens)
    torch.testing.assert_close(ablated, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_zero_ablating_and_clamping_a_latent_move_along_its_decoder_row(tiny, tokens, kind) -> None:
    model, sae = tiny.model, kind.sae
    latents = mechlab.capture(model, tokens, kind.site())[kind.site()]
    unit = int(latents.abs().sum((0, 1)).argmax())  # the most active latent
    with hooked(model, zero_ablation([kind.site(unit)])):
        ablated = model(tokens)
    expected = _edited(model, tokens, lambda act: act - latents[..., unit : unit + 1] * sae.W_dec[unit])
    torch.testing.assert_close(ablated, expected, rtol=0, atol=1e-5)
    assert float((ablated - model(tokens)).abs().max()) > 1e-2

    with hooked(model, kind.clamp({unit: 4.0, 2: 0.0}, pos=-1)):
        clamped = model(tokens)

    def clamp_by_hand(act: Tensor) -> Tensor:
        out = act.clone()
        out[:, -1] += (4.0 - latents[:, -1, unit : unit + 1]) * sae.W_dec[unit]
        out[:, -1] -= latents[:, -1, 2:3] * sae.W_dec[2]
        return out

    torch.testing.assert_close(clamped, _edited(model, tokens, clamp_by_hand), rtol=0, atol=1e-5)
    torch.testing.assert_close(clamped[:, :-1], model(tokens)[:, :-1], rtol=0, atol=1e-6)


@torch.no_grad()
def test_patching_latents_matches_the_edit_by_hand(tiny, pair, kind) -> None:
    clean, corrupted = pair
    model, sae = tiny.model, kind.sae
    units = [0, 5, 17, 40]
    result = mechlab.patch(model, clean, corrupted, Sweep("res", heads=units), METRIC)
    assert tuple(result.values.shape) == (1, len(units))
    clean_latents = mechlab.capture(model, clean, "res.1")["res.1"]
    corrupted_latents = mechlab.capture(model, corrupted, "res.1")["res.1"]
    for j, unit in enumerate(units):
        delta = clean_latents[..., unit : unit + 1] - corrupted_latents[..., unit : unit + 1]
        expected = METRIC(
            _edited(model, corrupted, lambda act, d=delta, u=unit: act + d * sae.W_dec[u])
        ).mean()
        torch.testing.assert_close(result.values[0, j], expected, rtol=0, atol=1e-5)


def test_attribution_patching_over_latents_is_gradient_times_difference_and_tracks_patching(
    tiny, pair, kind
) -> None:
    clean, corrupted = pair
    model, sae = tiny.model, kind.sae
    estimate = attribution_patch(model, clean, corrupted, Sweep("res"), METRIC)
    actual = mechlab.patch(model, clean, corrupted, Sweep("res"), METRIC)
    leaves: list[Tensor] = []

    def leaf(act: Tensor) -> Tensor:
        leaves.append(act.detach().requires_grad_(True))
        return leaves[-1]

    with torch.enable_grad():
        (grad_resid,) = torch.autograd.grad(METRIC(_edited(model, corrupted, leaf)).sum(), leaves)
    delta = (
        mechlab.capture(model, clean, "res.1")["res.1"] - mechlab.capture(model, corrupted, "res.1")["res.1"]
    )
    with torch.no_grad():
        per_unit = torch.einsum("bpd,ud,bpu->bu", grad_resid, sae.W_dec, delta)
        expected = METRIC(model(corrupted)) + per_unit.T
    torch.testing.assert_close(estimate.values[0], expected.mean(-1), rtol=0, atol=1e-5)
    # against the measured effect of patching each latent (the first-order estimate is exact up to
    # the model's curvature along one decoder row)
    moved = actual.delta[0].abs() > 1e-4
    assert int(moved.sum()) >= 10
    r = pearson(estimate.delta[0][moved].tolist(), actual.delta[0][moved].tolist())
    assert r > 0.95, r


def test_gradients_upstream_of_an_attached_kind_are_the_models_own(tiny, tokens, kind) -> None:
    """Reading latents with gradients on changes no gradient elsewhere: ∂x'/∂x is the identity."""
    model = tiny.model
    early = Site("resid_post", 0)
    with differentiable(model, [early]) as acts:
        plain = gradients(METRIC(model(tokens)), acts, [early])[early]
    with differentiable(model, [early, kind.site()]) as acts:
        both = gradients(METRIC(model(tokens)), acts, [early, kind.site()])
    torch.testing.assert_close(both[early], plain, rtol=0, atol=1e-6)
    assert float(both[kind.site()].abs().max()) > 0


@torch.no_grad()
def test_steering_a_latent_adds_its_decoder_row(tiny, tokens, kind) -> None:
    model = tiny.model
    through_kind = steer(model, tokens[:1], kind.site(), kind.unit_vector(9), 7, scales=(-3.0, 2.0))
    row = kind.decoder_direction(9)
    torch.testing.assert_close(row, kind.sae.W_dec[9], rtol=0, atol=1e-6)
    at_host = steer(
        model, tokens[:1], Site("resid_post", LAYER), row, 7, scales=(-3.0, 2.0), unit=float(row.norm())
    )
    torch.testing.assert_close(through_kind.values, at_host.values, rtol=0, atol=1e-5)
    assert float((through_kind.values - through_kind.clean).abs().max()) > 1e-2


def test_attaching_is_one_call_and_detaching_removes_the_kind(tiny, tokens) -> None:
    model = tiny.model
    sae = make_sae()
    kind = attach_sae(model, sae, name="res")
    try:
        assert attach_sae(model, sae, name="res") is kind  # the same SAE again: the same kind
        assert mechlab.capture(model, tokens, "res.1.3")["res.1.3"].shape == tokens.shape
        with pytest.raises(SiteError, match="Two site kinds are named 'res'"):
            attach_sae(model, make_sae(seed=1), name="res")
        with pytest.raises(SiteError, match=r"exists at layers \[1\] only"):
            mechlab.capture(model, tokens, "res.0")
        with pytest.raises(SiteError, match=r"names unit 48, but layer 1 has 48 units"):
            mechlab.capture(model, tokens, "res.1.48")
    finally:
        detach_sae(kind)
    with pytest.raises(SiteError, match="Unknown site kind 'res'"):
        Site("res", 1)
    with pytest.raises(RuntimeError, match="boom"), attached(model, sae, name="res"):
        raise RuntimeError("boom")
    with pytest.raises(SiteError, match="Unknown site kind 'res'"):
        Site("res", 1)
    assert mechlab.active_hook_count(model) == 0


def test_bad_saes_and_latents_are_refused_with_the_fix(tiny) -> None:
    model = tiny.model
    with pytest.raises(
        SiteError, match=r"reads 16-wide activations, but resid_post.1 of this model is 32 wide"
    ):
        attach_sae(model, make_sae(d_in=16))
    with pytest.raises(SiteError, match="names layer 5, but the model has 2 layers"):
        attach_sae(model, make_sae(site="resid_post.5"))
    transcoder = SAE(
        SAEConfig(d_in=32, d_sae=8, architecture="relu", site="resid_mid.1", site_out="mlp_out.1")
    )
    with pytest.raises(InputError, match="transcoder"):
        attach_sae(model, transcoder)
    with pytest.raises(InputError, match="whole vector hook point"):
        attach_sae(model, make_sae(site="ln1_scale.1", d_in=1))
    with pytest.raises((InputError, TypeError), match="SAE"):  # TypeError: the test run's type checker
        attach_sae(model, object())  # type: ignore[arg-type]
    with attached(model, make_sae(), name="res") as kind:
        with pytest.raises(InputError, match=r"has latents 0\.\.47"):
            kind.unit_vector(48)
        with pytest.raises(InputError, match="at least one"):
            kind.clamp({})
    assert kind_name("SAE res-6 (v2)") == "sae_res_6_v2" and kind_name("6layer") == "sae_6layer"
