"""Steering and directional ablation: does the model *use* a direction a probe can read?

A probe that reads a concept from layer ``L`` shows the information is there, not that the model
relies on it. Intervening tests that: add ``s · σ · u`` to the activation at every position (``u``
the unit direction, ``σ`` the spread of activations along it, so ``s`` counts standard deviations)
and watch a target move; or project ``u`` out (``a - (a·u) u``) and see what is lost.

``steer_with_probe`` takes the direction and ``σ`` from a binary ``ProbeResult``; ``steer`` takes any
direction. All scales and the ablation run as one batch; the prompt's own tensors are not touched.
"""

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.errors import InputError
from mechlab.hooks import hooked
from mechlab.probes.probes import VECTOR_KINDS, ProbeResult
from mechlab.render.figures import lines
from mechlab.render.page import Page
from mechlab.render.tokens import plot_text
from mechlab.sites import Site, validate
from mechlab.targets import TargetSpec, prompt_target
from mechlab.tokens import as_tokens, str_tokens
from mechlab.types import HookedModel, Tokens

DEFAULT_SCALES = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)


@dataclasses.dataclass(frozen=True, eq=False)
class SteeringResult:
    """A target under steering along a direction, and under its ablation.

    Attributes:
        tokens, str_tokens: the prompt.
        site: where the direction was added.
        target: the target's label.
        scales: multiples of ``unit`` added along the direction.
        unit: the step size (the spread of activations along the direction, or 1).
        values: the target at each scale.
        clean: the target without intervention.
        ablated: the target with the direction projected out.
    """

    tokens: Tokens
    str_tokens: tuple[str, ...]
    site: Site
    target: str
    scales: tuple[float, ...]
    unit: float
    values: Float[Tensor, " scale"]
    clean: float
    ablated: float

    def summary(self) -> str:
        low, high = float(self.values[0]), float(self.values[-1])
        return (
            f"Steering at {self.site}: {self.target} is {self.clean:.3f} unsteered, {low:.3f} at "
            f"{self.scales[0]:+g}σ, {high:.3f} at {self.scales[-1]:+g}σ (σ = {self.unit:.3g}); "
            f"{self.ablated:.3f} with the direction projected out."
        )

    def plot(self) -> Figure:
        return lines(
            {plot_text(self.target): self.values, "ablated": torch.full((len(self.scales),), self.ablated)},
            title=f"Steering along the direction at {self.site}",
            xlabel="added multiple of σ",
            ylabel=plot_text(self.target),
            x=list(self.scales),
        )

    def add_to(self, page: Page, *, title: str = "Steering along the probe direction") -> Page:
        page.section(title, self.summary()).figure(self.plot(), alt="target against steering scale")
        return page

    def page(self, title: str = "Steering") -> Page:
        return self.add_to(Page(title))

    def _repr_html_(self) -> str:
        return self.page().body()


def steer(
    model: HookedModel,
    tokens: str | Tensor,
    site: Site,
    direction: Float[Tensor, " d_model"],
    target: TargetSpec,
    *,
    scales: Sequence[int | float] = DEFAULT_SCALES,
    unit: float = 1.0,
) -> SteeringResult:
    """The target with ``s · unit · u`` added at ``site`` (every position) for each ``s``, and with
    ``u`` projected out, where ``u = direction / |direction|``.

    ``site`` is a whole per-layer vector activation (``resid_pre/mid/post``, ``attn_out``,
    ``mlp_out``, ``mlp_pre``, ``mlp_post``), the kinds probes read, or a whole site of a registered
    extension kind (``mechlab.site_kinds``; the direction then has one entry per unit).
    """
    toks = as_tokens(model, tokens)
    goal = prompt_target(model, toks, target)
    vector = site.kind in VECTOR_KINDS or site.extension is not None
    if not vector or site.head is not None or site.pos is not None:
        raise InputError(
            f"steer adds a vector at every position of a per-layer activation [batch pos d]; {site} is "
            f"not one. Use a whole site of kind {', '.join(VECTOR_KINDS)}, e.g. Site('resid_post', 12)."
        )
    site = validate(site, model)
    if direction.ndim != 1 or float(direction.norm()) == 0:
        raise InputError(f"direction must be a non-zero vector, got shape {tuple(direction.shape)}.")
    u = (direction / direction.norm()).to(model.cfg.device)
    steps = torch.tensor([*scales, 0.0], device=u.device) * unit  # last row: ablation

    def intervene(act: Tensor, _: Site) -> Tensor:
        if act.shape[-1] != u.shape[0]:
            raise InputError(
                f"The direction has {u.shape[0]} entries; activations at {site} have {act.shape[-1]}."
            )
        out = act + steps.to(act.dtype)[:, None, None] * u.to(act.dtype)
        ablated = act[-1] - (act[-1] @ u.to(act.dtype))[..., None] * u.to(act.dtype)
        return torch.cat([out[:-1], ablated[None]])

    with torch.no_grad():
        clean = float(goal(model(toks))[0])
        with hooked(model, {site: intervene}):
            values = goal(model(toks.expand(len(steps), -1))).float().cpu()
    return SteeringResult(
        tokens=toks,
        str_tokens=str_tokens(model, toks),
        site=site,
        target=goal.label,
        scales=tuple(float(s) for s in scales),
        unit=unit,
        values=values[:-1],
        clean=clean,
        ablated=float(values[-1]),
    )


def steer_with_probe(
    model: HookedModel,
    tokens: str | Tensor,
    probe: ProbeResult,
    layer: int,
    target: TargetSpec,
    *,
    scales: Sequence[int | float] = DEFAULT_SCALES,
) -> SteeringResult:
    """Steer along a binary probe's direction at ``layer`` (toward its second class for ``s > 0``),
    in units of the training activations' spread along it."""
    row = probe.layers.index(layer) if layer in probe.layers else None
    if row is None:
        raise InputError(f"No probe at layer {layer}; probed layers: {list(probe.layers)}.")
    site = Site(probe.site_kind, layer)
    unit = float(probe.projection_std[row])
    return steer(model, tokens, site, probe.direction(layer), target, scales=scales, unit=unit)
