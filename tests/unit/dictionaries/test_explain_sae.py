"""The explain report's SAE section on the tiny toy: activations, attributions (activation × gradient
through the latent site) and knock-outs checked by hand, and the section's HTML (links to feature
pages that exist on the same page, text escaped)."""

import re

import pytest
import torch

import mechlab
from mechlab import LogitDiff, Site, hooked
from mechlab.dictionaries.site import attached
from mechlab.interventions.attribution_patching import pearson
from mechlab.render.page import Page
from mechlab.report.latents import add_sae_sections, sae_findings
from mechlab.targets import Target
from tests.unit.dictionaries.test_site import LAYER, make_sae

CONTEXT = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(8))
CORPUS = torch.randint(0, 50, (12, 10), generator=torch.Generator().manual_seed(9))
TARGET = Target(LogitDiff(3, 11), "logit(#3) − logit(#11)", 3, 11, "logit_diff")


@pytest.fixture(scope="module")
def found(tiny):
    sae = make_sae()
    with attached(tiny.model, sae, name="res") as kind:
        findings = sae_findings(
            tiny.model, CONTEXT, TARGET, kind, top=6, corpus=CORPUS, corpus_name="a toy corpus"
        )
    return sae, findings


def _by_hand(model, sae) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and ∂target/∂latents at the last position, from the host's gradient and W_dec."""
    leaves: list[torch.Tensor] = []

    def leaf(act: torch.Tensor, site: Site) -> torch.Tensor:
        leaves.append(act.detach().requires_grad_(True))
        return leaves[-1]

    with torch.enable_grad(), hooked(model, {Site("resid_post", LAYER): leaf}):
        (resid_grad,) = torch.autograd.grad(TARGET(model(CONTEXT)).sum(), leaves)
    with torch.no_grad():
        latents = sae.encode(leaves[0].detach())[0, -1]
        grad = sae.W_dec @ resid_grad[0, -1]
    return latents, grad


def test_activations_and_attributions_are_activation_times_gradient(tiny, found) -> None:
    sae, findings = found
    latents, grad = _by_hand(tiny.model, sae)
    assert findings.position == CONTEXT.shape[1] - 1 and findings.site == "resid_post.1"
    assert findings.n_active == int((latents > 0).sum()) > 6
    listed = {f.latent for f in findings.latents}
    assert set(latents.topk(6).indices.tolist()) <= listed
    assert set((latents * grad).abs().topk(6).indices.tolist()) <= listed
    for finding in findings.latents:
        assert finding.activation == pytest.approx(float(latents[finding.latent]), abs=1e-5)
        assert finding.attribution == pytest.approx(
            float(latents[finding.latent] * grad[finding.latent]), abs=1e-5
        )
        assert finding.rank == int((latents > latents[finding.latent]).sum())
    assert findings.total_attribution == pytest.approx(float((latents * grad).sum()), abs=1e-4)
    attributions = [abs(f.attribution) for f in findings.latents]
    assert attributions == sorted(attributions, reverse=True)


@torch.no_grad()
def test_knockouts_are_measured_and_tracked_by_the_attributions(tiny, found) -> None:
    sae, findings = found
    model = tiny.model
    clean = float(TARGET(model(CONTEXT))[0])
    with attached(model, sae, name="res") as kind:
        for finding in findings.latents[:3]:
            with hooked(model, kind.clamp({finding.latent: 0.0}, pos=-1)):
                ablated = float(TARGET(model(CONTEXT))[0])
            assert finding.ablation == pytest.approx(clean - ablated, abs=1e-5)
    r = pearson([f.attribution for f in findings.latents], [f.ablation for f in findings.latents])
    assert r > 0.9, r
    host = mechlab.capture(model, CONTEXT, "resid_post.1")["resid_post.1"][0, -1]
    expected = float((host - sae(host)).norm() / host.norm())
    assert findings.error_fraction == pytest.approx(expected, rel=1e-5)


def test_feature_pages_come_from_the_corpus_for_the_listed_latents(found) -> None:
    _, findings = found
    pages = findings.features
    assert [f.latent for f in pages.features] == [f.latent for f in findings.latents]
    assert pages.corpus == "a toy corpus" and pages.n_tokens == CORPUS.numel()
    assert any(feature.contexts for feature in pages.features)


def test_the_section_links_each_latent_to_its_page(found) -> None:
    _, findings = found
    page = add_sae_sections(Page("report", id_prefix="r"), (findings,))
    html = page.render()
    links = re.findall(r'href="#(res-latent-\d+)"', html)
    anchors = set(re.findall(r'id="(res-latent-\d+)"', html))
    assert len(links) >= len(findings.latents) and set(links) <= anchors
    assert len(anchors) == len(findings.latents)
    assert "Which dictionary latents are active (res at resid_post.1)" in html
    assert f"{findings.latents[0].attribution:+.3f}" in html and "a toy corpus" in html
    summary = findings.to_dict()
    assert summary["latents"][0]["latent"] == findings.latents[0].latent


def test_the_sae_is_detached_and_the_model_untouched_after(tiny) -> None:
    model, sae = tiny.model, make_sae()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = [p.grad for p in model.parameters()]
    before = (CONTEXT.clone(), sae.W_dec.detach().clone())
    with attached(model, sae, name="res") as kind:
        sae_findings(model, CONTEXT, TARGET, kind, top=2)
    assert mechlab.active_hook_count(model) == 0
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.equal(p, params[name]) for name, p in model.named_parameters())
    assert torch.equal(before[0], CONTEXT) and torch.equal(before[1], sae.W_dec) and sae.W_dec.grad is None
    with pytest.raises(mechlab.SiteError, match="Unknown site kind 'res'"):
        Site("res", 1)


def test_explain_checks_its_saes_before_any_work(tiny) -> None:
    settings = mechlab.ExplainSettings(detectors=())
    with pytest.raises(mechlab.SiteError, match="reads 16-wide activations"):
        mechlab.explain(tiny.model, "text", settings=settings, saes=[make_sae(d_in=16)])
    with pytest.raises(mechlab.InputError, match="share a name"):
        mechlab.explain(
            tiny.model, "text", settings=settings, saes={"A b": make_sae(), "a-b": make_sae(seed=1)}
        )
    with pytest.raises(mechlab.InputError, match="This model has no tokenizer"):  # past the SAE checks
        mechlab.explain(tiny.model, "text", settings=settings, saes={"res": make_sae()})
    with pytest.raises(mechlab.SiteError, match="Unknown site kind 'res'"):
        Site("res", 1)
