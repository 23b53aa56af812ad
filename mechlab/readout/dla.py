"""Direct logit attribution (DLA): what each layer and head writes straight into a target logit.

The residual stream read by the unembedding is a sum of component outputs: token embedding,
positional embedding (if the model has one), each head's ``z_h @ W_O[h]``, each attention output
bias, each MLP output. The final norm divides the sum by one scale per position (RMSNorm:
``rms(x)``; LayerNorm: the standard deviation, after centring) and multiplies by its weight. DLA
**freezes that scale at its value in the clean run**: with the scale a constant, the map from
residual to logit is linear, so each component's contribution is

    (centre(c) / scale) * w  @  (W_U[:, answer] - W_U[:, contrast])

and the contributions plus the bias terms (each layer's ``b_O``, the norm's bias and ``b_U``,
projected the same way) sum to the logit (difference) the model produced. ``remainder`` is what is
left over, computed against the model's real logits: floating-point error, or any part of the
stream the decomposition missed or mis-split (it is not absorbed by any other term). On SmolLM2 it is
below 1e-5.

``W_O`` holds one matrix per *query* head, so grouped-query models (SmolLM2: 9 query heads, 3
key/value heads) get per-head attributions like any other model. DLA measures direct effects only:
a head whose output later layers read and amplify gets no credit for what they do with it (use
activation patching for total effects).
"""

import dataclasses
from typing import Any

import einops
import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.activations import capture
from mechlab.errors import InputError
from mechlab.render.figures import heatmap
from mechlab.render.page import Page
from mechlab.render.tokens import plot_text
from mechlab.sites import Site, layer_sites
from mechlab.targets import Target, make_target, resolve_pos
from mechlab.tokens import as_tokens, str_tokens
from mechlab.types import HeadScores, HookedModel, LayerScores, Tokens

_NORMS = ("LN", "LNPre", "RMS", "RMSPre", None)


@dataclasses.dataclass(frozen=True, eq=False)
class DirectLogitAttribution:
    """Direct contributions to one target logit (or logit difference) at one position.

    Attributes:
        tokens, str_tokens: the prompt.
        pos: the position read.
        target: the target's label.
        value: the model's actual logit (difference) at ``pos``.
        embed: contribution of the token embedding; ``pos_embed`` of the positional embedding.
        heads: ``[layer, head]`` per-head contributions.
        attn_bias: ``[layer]`` each attention layer's output bias ``b_O`` (zeros without one).
        mlp: ``[layer]`` per-MLP contributions (zeros in attention-only models).
        bias: the final norm's bias and ``b_U``, projected on the target.
        remainder: ``value`` minus the sum of every term above.
        scale: the frozen final-norm scale at ``pos``.
    """

    tokens: Tokens
    str_tokens: tuple[str, ...]
    pos: int
    target: str
    value: float
    embed: float
    pos_embed: float
    heads: HeadScores
    attn_bias: LayerScores
    mlp: LayerScores
    bias: float
    remainder: float
    scale: float

    @property
    def attn(self) -> LayerScores:
        """Per-layer attention contribution: its heads plus its output bias."""
        return self.heads.sum(-1) + self.attn_bias

    @property
    def by_layer(self) -> LayerScores:
        """Per-layer contribution: attention plus MLP."""
        return self.attn + self.mlp

    @property
    def total(self) -> float:
        """The sum of all terms except ``remainder`` (equals ``value`` up to ``remainder``)."""
        parts = self.embed + self.pos_embed + self.bias
        return parts + float(
            self.heads.double().sum() + self.attn_bias.double().sum() + self.mlp.double().sum()
        )

    def top_heads(self, k: int = 10, *, by: str = "abs") -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest (``by="abs"``) or most positive (``"value"``) effect."""
        flat = self.heads.flatten()
        order = torch.argsort(flat.abs() if by == "abs" else flat, descending=True)[:k].tolist()
        n_heads = self.heads.shape[1]
        return [(i // n_heads, i % n_heads, float(flat[i])) for i in order]

    def plot(self) -> Figure:
        """Per-head contributions as a ``layer × head`` heatmap."""
        return heatmap(
            self.heads,
            title=plot_text(f"Direct logit attribution per head: {self.target}"),
            xlabel="head",
            ylabel="layer",
            colorbar_label="direct contribution",
        )

    def plot_layers(self) -> Figure:
        """Per-layer attention and MLP contributions as grouped bars."""
        fig = Figure(figsize=(8, 3.4), layout="constrained")
        ax = fig.add_subplot()
        layers = torch.arange(len(self.mlp)).numpy()
        ax.bar(layers - 0.2, self.attn.numpy(), width=0.4, label="attention", color="#1f77b4")
        ax.bar(layers + 0.2, self.mlp.numpy(), width=0.4, label="MLP", color="#ff7f0e")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("layer")
        ax.set_ylabel("direct contribution")
        ax.set_title(plot_text(f"Direct logit attribution per layer: {self.target}"), fontsize=10)
        ax.legend(fontsize=8)
        return fig

    def summary(self) -> str:
        return (
            f"DLA of {self.target} at position {self.pos}: model value {self.value:.4f}; embed "
            f"{self.embed:+.3f}, heads {float(self.heads.sum()):+.3f}, MLPs {float(self.mlp.sum()):+.3f}, "
            f"biases {self.bias + float(self.attn_bias.sum()):+.3f}, remainder {self.remainder:+.2e} "
            f"(final-norm scale {self.scale:.4g} frozen from this run)."
        )

    def add_to(self, page: Page, *, title: str = "Direct logit attribution") -> Page:
        section = page.section(title, self.summary())
        section.figure(self.plot_layers(), alt="direct logit attribution per layer")
        section.figure(self.plot(), alt="direct logit attribution per head")
        rows = [(f"L{layer}H{head}", f"{value:+.3f}") for layer, head, value in self.top_heads(10)]
        section.table(["head", "contribution"], rows, caption="Heads with the largest direct effect")
        return page

    def page(self, title: str = "Direct logit attribution") -> Page:
        return self.add_to(Page(title))

    def _repr_html_(self) -> str:
        return self.page().body()


def _direction(model: Any, target: Target) -> tuple[Float[Tensor, " d_model"], float]:
    """The unembedding direction of the target and its ``b_U`` term."""
    token = target.token if target.token is not None else 0
    w_u, b_u = model.W_U, getattr(model, "b_U", None)
    direction = w_u[:, token].clone()
    bias = 0.0 if b_u is None else float(b_u[token])
    if target.contrast is not None:
        direction = direction - w_u[:, target.contrast]
        bias -= 0.0 if b_u is None else float(b_u[target.contrast])
    return direction.float(), bias


class _FrozenNorm:
    """The final norm with its scale frozen at one position: a linear map followed by ``@ W_U``."""

    def __init__(self, model: Any, scale: Tensor, direction: Tensor) -> None:
        weight = getattr(model.ln_final, "weight", None)
        self.centre = model.cfg.normalization_type in ("LN", "LNPre")
        self.read = direction * (weight.float() if weight is not None else 1.0) / scale
        ln_bias = getattr(model.ln_final, "bias", None)
        self.bias = float(ln_bias.float() @ direction) if ln_bias is not None else 0.0

    def project(self, vectors: Float[Tensor, "... d_model"]) -> Tensor:
        vectors = vectors.float()
        if self.centre:
            vectors = vectors - vectors.mean(-1, keepdim=True)
        return vectors @ self.read


def _output_bias(model: Any) -> Float[Tensor, "layer d_model"] | None:
    """``b_O`` per layer, or ``None`` for bias-free attention (TL bridges raise on ``b_O`` then)."""
    try:
        b_o = model.b_O
    except AttributeError:
        return None
    return None if b_o is None else b_o.detach()


def _sites(model: HookedModel) -> dict[str, list[Site]]:
    hooks = model.hook_dict if hasattr(model, "hook_dict") else {}
    has = {kind: (Site(kind).hook_name in hooks) for kind in ("pos_embed", "ln_final_scale")}
    # Rotary models keep a hook_pos_embed alias that never fires; only additive embeddings count.
    has["pos_embed"] &= getattr(model.cfg, "positional_embedding_type", "standard") in (
        "standard",
        "shortformer",
    )
    if not has["ln_final_scale"] and model.cfg.normalization_type is not None:
        raise InputError("DLA needs the final norm's scale hook (ln_final.hook_scale); this model has none.")
    has_mlp = Site("mlp_out", 0).hook_name in hooks
    return {
        "embed": [Site("embed")] + ([Site("pos_embed")] if has["pos_embed"] else []),
        "z": layer_sites(model, "z"),
        "mlp_out": layer_sites(model, "mlp_out") if has_mlp else [],
        "scale": [Site("ln_final_scale")] if has["ln_final_scale"] else [],
    }


def _logit_target(
    model: HookedModel, target: Target | str | int, contrast: str | int | None, pos: int
) -> Target:
    """The logit (difference) DLA decomposes: a token ``Target`` keeps its contrast and position."""
    if not isinstance(target, Target):
        return make_target(model, target, contrast=contrast, kind="logit", pos=pos)
    if target.token is None:
        raise InputError("DLA needs a token target (optionally with a contrast), not a custom metric.")
    return make_target(model, target.token, contrast=target.contrast, kind="logit", pos=target.pos)


@torch.no_grad()
def direct_logit_attribution(
    model: HookedModel,
    tokens: str | Tensor,
    target: Target | str | int,
    *,
    contrast: str | int | None = None,
    pos: int = -1,
) -> DirectLogitAttribution:
    """Direct logit attribution of ``target`` (minus ``contrast``) at ``pos`` to every component.

    Args:
        model: a hooked model (LayerNorm, RMSNorm or no final norm).
        tokens: one prompt, as text or token ids.
        target: a token (text or id) or a token ``Target`` (its ``contrast`` and ``pos`` are used).
        contrast: a second token: attribute ``logit[target] - logit[contrast]``.
        pos: the position whose prediction is attributed.
    """
    if model.cfg.normalization_type not in _NORMS:
        raise InputError(
            f"DLA supports LN/RMS final norms; this model's is {model.cfg.normalization_type!r}."
        )
    toks = as_tokens(model, tokens)
    goal = _logit_target(model, target, contrast, pos)
    where = resolve_pos(goal.pos, toks.shape[1], what=f"The target {goal.label} reads position")
    direction, b_u = _direction(model, goal)
    sites = _sites(model)
    acts = capture(model, toks, [s for group in sites.values() for s in group])
    logits = acts.logits
    assert logits is not None  # capture(..., logits=True) keeps them
    scale = acts[sites["scale"][0]][0, where, 0].float() if sites["scale"] else torch.tensor(1.0)
    norm = _FrozenNorm(model, scale, direction)

    def at(kind: str) -> Tensor:
        return torch.stack([acts[s][0, where] for s in sites[kind]])

    w_o: Tensor = model.W_O  # type: ignore[attr-defined]
    head_out = einops.einsum(
        at("z").float(), w_o.float(), "layer head d_head, layer head d_head d_model -> layer head d_model"
    )
    heads = norm.project(head_out)
    b_o = _output_bias(model)
    # From b_O itself, not attn_out − Σ heads: that would absorb any error in the head split.
    attn_bias = torch.zeros(len(heads)) if b_o is None else norm.project(b_o)
    mlp = norm.project(at("mlp_out")) if sites["mlp_out"] else torch.zeros(len(heads))
    embeds = [float(norm.project(acts[s][0, where])) for s in sites["embed"]]
    bias = b_u + norm.bias
    value = float(goal(logits)[0])
    parts = sum(embeds) + bias + float(heads.double().sum() + attn_bias.double().sum() + mlp.double().sum())
    return DirectLogitAttribution(
        tokens=toks,
        str_tokens=str_tokens(model, toks),
        pos=where,
        target=goal.label,
        value=value,
        embed=embeds[0],
        pos_embed=embeds[1] if len(embeds) > 1 else 0.0,
        heads=heads,
        attn_bias=attn_bias,
        mlp=mlp,
        bias=bias,
        remainder=value - parts,
        scale=float(scale),
    )
