"""The dictionary-latent section of the ``explain`` report (``--sae DIR``).

For each SAE, attached as a site kind (``mechlab.dictionaries.site``) at the hook point it reads, and
the explained position ``p`` (the context's last token, where the explained logit difference is
read):

- ``activation``: the latent's value ``z_i(p)``;
- ``attribution``: activation × gradient, ``z_i(p) · ∂target/∂z_i(p)``, taken through the latent
  site (the SAE's error term kept, so the gradient is the model's own). This is attribution patching
  (AtP) over latents with zero as the baseline: the first-order estimate of how much the explained
  logit difference drops when latent ``i`` is zero-ablated at ``p``. One forward and one backward
  pass give it for every latent;
- ``knock-out``: that drop measured, zero-ablating the latent at ``p`` for real (one forward pass per
  listed latent), so the estimate can be checked where it matters.

The latents listed are the most active at ``p`` together with those of largest |attribution|; each
links to its feature page (top-activating corpus contexts, activation histogram, logit effects),
embedded in the same report.
"""

import dataclasses
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.activations import capture
from mechlab.dictionaries.feature_report import FeatureReport
from mechlab.dictionaries.features import feature_pages
from mechlab.dictionaries.site import SAESite
from mechlab.hooks import differentiable, gradients
from mechlab.interventions.inputs import Ablation
from mechlab.interventions.patching import patch
from mechlab.models.quantized import exact_gradients
from mechlab.render.html import escape
from mechlab.render.page import Page
from mechlab.render.tokens import visible
from mechlab.sites import Site
from mechlab.targets import Target
from mechlab.types import HookedModel, Tokens


@dataclasses.dataclass(frozen=True)
class LatentFinding:
    """One latent at the explained position: its activation, its rank by activation (0 = most
    active), its attribution (activation × gradient: the AtP estimate of the knock-out effect) and
    the measured knock-out effect (drop in the target when zero-ablated at the position)."""

    latent: int
    activation: float
    rank: int
    attribution: float
    ablation: float


@dataclasses.dataclass(frozen=True)
class SAEFindings:
    """What one SAE shows at the explained position.

    Attributes:
        name: the SAE's site-kind name; site: the hook point it reads; position: the explained one.
        n_active: latents active there (L0); error_fraction: ``|x − x̂| / |x|`` of the activation there.
        total_attribution: the attributions of all latents at the position, summed.
        latents: the listed latents, by |attribution|.
        features: their feature pages; corpus: what the pages' contexts come from.
    """

    name: str
    site: str
    position: int
    n_active: int
    error_fraction: float
    total_attribution: float
    latents: tuple[LatentFinding, ...]
    features: FeatureReport

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "site": self.site,
            "position": self.position,
            "n_active": self.n_active,
            "error_fraction": self.error_fraction,
            "total_attribution": self.total_attribution,
            "latents": [dataclasses.asdict(finding) for finding in self.latents],
            "corpus": self.features.corpus,
        }


@exact_gradients
def sae_findings(
    model: HookedModel,
    context: Tokens,
    target: Target,
    kind: SAESite,
    *,
    top: int = 10,
    corpus: Int[Tensor, "seq seq_pos"] | None = None,
    corpus_name: str = "a corpus",
    contexts: int = 5,
) -> SAEFindings:
    """The latents of ``kind`` at the last position of ``context`` (one prompt) and their attribution
    to ``target`` (see the module docstring); feature pages from ``corpus`` (``None``: the context
    itself)."""
    site = kind.site()
    position = int(context.shape[1]) - 1
    with differentiable(model, [site]) as acts:
        value = target(model(context))
        grads = gradients(value, acts, [site])
    latents = acts[site].detach()[0, position].float()
    attribution = latents * grads[site][0, position].float()
    n_active = int((latents > 0).sum())
    top = min(top, latents.numel())
    by_activation = [int(i) for i in latents.topk(top).indices if latents[i] > 0]
    by_attribution = [int(i) for i in attribution.abs().topk(top).indices if attribution[i] != 0]
    chosen = list(dict.fromkeys(by_activation + by_attribution))
    ranks = latents.argsort(descending=True, stable=True).argsort()
    ablation: list[float] = []
    if chosen:
        knocked = patch(
            model, context, Ablation("zero"), [[kind.site(i, pos=position)] for i in chosen], target
        )
        ablation = knocked.effect.reshape(-1).tolist()
    findings = sorted(
        (
            LatentFinding(i, float(latents[i]), int(ranks[i]), float(attribution[i]), effect)
            for i, effect in zip(chosen, ablation, strict=True)
        ),
        key=lambda f: -abs(f.attribution),
    )
    host = Site(kind.host, kind.layer)
    with torch.no_grad():
        x = capture(model, context, host, logits=False)[host][0, position].flatten().float()
        x_hat = kind.sae(x.to(kind.sae.W_enc.dtype)).float()
    error = float((x - x_hat).norm() / x.norm().clamp_min(1e-12))
    pages = feature_pages(
        model,
        kind,
        context if corpus is None else corpus,
        latents=[f.latent for f in findings] or [int(latents.argmax())],
        contexts=contexts,
        corpus="the explained context only" if corpus is None else corpus_name,
    )
    return SAEFindings(
        kind.name,
        str(kind.sae.cfg.site),
        position,
        n_active,
        error,
        float(attribution.sum()),
        tuple(findings),
        pages,
    )


INTRO = (
    "Each sparse autoencoder reads one hook point and rewrites its activation as a sum of sparse "
    "latents plus an error term. At the explained position, the table lists the latents most active "
    "there and those with the largest attribution. Attribution is activation × gradient through the "
    "latent (the SAE's error term kept, so the model computes as usual): attribution patching's "
    "first-order estimate of how much the logit difference would drop if the latent were zero-ablated "
    "at that position. The knock-out column is that drop measured, ablating the latent for real. "
    "Positive values push towards the chosen token, negative ones towards the runner-up. Each latent "
    "links to its feature page further down."
)


def _table(findings: SAEFindings) -> str:
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "latent",
            "activation",
            "rank by activation",
            "attribution (act × grad)",
            "knock-out",
            "promotes",
        )
    )
    rows = []
    for finding in findings.latents:
        feature = findings.features[finding.latent]
        promotes = ", ".join(repr(visible(token)) for token, _ in feature.promoted[:4]) or "-"
        anchor = escape(findings.features.anchor(finding.latent))
        cells = [
            f'<a href="#{anchor}">latent {finding.latent}</a>',
            escape(f"{finding.activation:.3g}"),
            escape(str(finding.rank + 1)),
            escape(f"{finding.attribution:+.3f}"),
            escape(f"{finding.ablation:+.3f}"),
            escape(promotes),
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f'<table class="mechlab"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def add_sae_sections(page: Page, all_findings: tuple[SAEFindings, ...]) -> Page:
    """One section per SAE (the latent table), then every SAE's feature pages."""
    for findings in all_findings:
        section = page.section(
            f"Which dictionary latents are active ({findings.name} at {findings.site})", INTRO
        )
        section.text(
            f"{findings.n_active} latents are active at position {findings.position}; their attributions "
            f"sum to {findings.total_attribution:+.3f}. The SAE's error term holds "
            f"{findings.error_fraction:.1%} of "
            "the activation's norm there: what the latents do not explain. Feature pages below take their "
            f"contexts from {findings.features.corpus} ({findings.features.n_tokens:,} tokens).",
            note=True,
        )
        if findings.latents:
            section.html(_table(findings))
        else:
            section.text("No latent is active at this position.", note=True)
    for findings in all_findings:
        findings.features.add_to(page, title=f"Feature page {findings.name}")
    return page
