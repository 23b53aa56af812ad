"""The local replacement model: the real model made linear around one prompt.

For a prompt, the real model runs once and its nonlinear pieces are read off:

1. attention patterns (``pattern.L``) — replayed as constants, so attention is linear in its values;
2. norm scales (``ln1``, ``ln2``, ``ln_final``) — each norm becomes ``centre(x) / scale`` with the
   recorded scale (no centring for RMSNorm), linear in ``x``;
3. each MLP ``L`` with a transcoder — replaced by ``decode(z) + skip(mlp_in) + error``, where ``z``
   are the transcoder's feature activations on the real ``mlp_in`` (constants), ``skip`` is linear,
   and ``error = mlp_out - transcoder(mlp_in)`` is a constant. A layer without a transcoder keeps its
   real output as a constant (all of it error).

Every piece then equals its real value, so the replacement forward pass reproduces the real logits
exactly (up to float rounding), while being affine in the sources: token embeddings, feature
activations and error vectors. Gradients taken in it are direct effects: they pass through
attention, norms and skip connections, never through a feature (circuit-tracer's construction).
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.dictionaries.transcoder import Transcoder
from mechlab.errors import InputError
from mechlab.hooks import SiteHook, hooked, recorder
from mechlab.sites import Site
from mechlab.types import HookedModel

# Input normalizations a frozen forward pass keeps affine.
_AFFINE_NORMALIZATIONS = ("none", "expected_average_only_in")


@dataclasses.dataclass(frozen=True)
class ReplacementRun:
    """What one real forward pass fixed, for one prompt (batch 1).

    Attributes:
        tokens: ``[1, pos]``.
        logits: the real logits ``[pos, d_vocab]``.
        frozen: the recorded patterns and norm scales (``[1, ...]``), keyed by site.
        mlp_in: ``{layer: [pos, d_model]}`` for layers with a transcoder.
        activations: ``{layer: [pos, d_sae]}`` feature activations.
        errors: ``[layer, pos, d_model]``: ``mlp_out`` minus the transcoder's prediction (all of
            ``mlp_out`` at layers without a transcoder).
        embed: ``[pos, d_model]`` token (plus learned positional) embeddings.
        has_pos_embed: whether the model adds a learned positional embedding.
        rms: whether the norms are RMSNorms (no centring).
    """

    tokens: Int[Tensor, "1 pos"]
    logits: Float[Tensor, "pos d_vocab"]
    frozen: dict[Site, Tensor]
    mlp_in: dict[int, Float[Tensor, "pos d_model"]]
    activations: dict[int, Float[Tensor, "pos d_sae"]]
    errors: Float[Tensor, "layer pos d_model"]
    embed: Float[Tensor, "pos d_model"]
    pos_embed: Float[Tensor, "pos d_model"] | None
    rms: bool

    @property
    def n_pos(self) -> int:
        """Prompt length."""
        return int(self.tokens.shape[1])


def check_transcoders(model: HookedModel, transcoders: Mapping[int, Transcoder]) -> dict[int, Transcoder]:
    """Validate ``{layer: transcoder}`` against ``model``; return it sorted by layer."""
    if not isinstance(transcoders, Mapping) or not transcoders:
        raise InputError(
            "The replacement model needs {layer: Transcoder} with at least one transcoder; got "
            f"{type(transcoders).__name__}. Load them with mechlab.load_transcoders(DIR)."
        )
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    for layer, tc in transcoders.items():
        if not isinstance(tc, Transcoder):
            raise InputError(f"transcoders[{layer}] is a {type(tc).__name__}; expected a Transcoder.")
        if not 0 <= layer < n_layers or tc.layer != layer:
            raise InputError(
                f"transcoders[{layer}] reads {tc.cfg.site}; the key must be its layer, in 0..{n_layers - 1}."
            )
        if (tc.cfg.d_in, tc.cfg.width_out) != (d_model, d_model):
            raise InputError(
                f"The layer-{layer} transcoder maps {tc.cfg.d_in} → {tc.cfg.width_out} widths; this "
                f"model's MLPs map d_model={d_model} → {d_model}. Was it trained on another model?"
            )
        if tc.cfg.normalize_activations not in _AFFINE_NORMALIZATIONS:
            raise InputError(
                f"The layer-{layer} transcoder normalizes each input ({tc.cfg.normalize_activations}), "
                "which is not linear; the replacement model needs 'none' or 'expected_average_only_in'."
            )
    return dict(sorted(transcoders.items()))


def _frozen_sites(n_layers: int) -> list[Site]:
    sites = [Site("ln_final_scale")]
    for layer in range(n_layers):
        sites += [Site("pattern", layer), Site("ln1_scale", layer), Site("ln2_scale", layer)]
    return sites


@torch.no_grad()
def capture_run(
    model: HookedModel,
    transcoders: Mapping[int, Transcoder],
    tokens: Int[Tensor, "1 pos"],
    *,
    zero_first: int = 1,
) -> ReplacementRun:
    """Run the real model on ``tokens`` once and record what the replacement model freezes.

    ``zero_first``: the first positions carry no features; their MLP outputs go wholly to the
    error nodes (the transcoders are trained without them: the attention sink; circuit-tracer
    zeroes the BOS position likewise).
    """
    transcoders = check_transcoders(model, transcoders)
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise InputError(
            f"capture_run takes one prompt, token ids [1, pos]; got shape {tuple(tokens.shape)}."
        )
    n_layers = model.cfg.n_layers
    has_pos = model.cfg.positional_embedding_type == "standard"
    sites = _frozen_sites(n_layers) + [Site("embed")] + ([Site("pos_embed")] if has_pos else [])
    sites += [Site("mlp_out", layer) for layer in range(n_layers)]
    sites += [Site("mlp_in", layer) for layer in transcoders]
    acts: dict[Site, Tensor] = {}
    with hooked(model, {site: recorder(acts) for site in sites}):
        logits = model(tokens)
    if not torch.isfinite(logits).all():
        raise InputError(
            "The model's logits on this prompt hold NaN or infinite values; nothing to attribute."
        )
    errors = torch.stack([acts[Site("mlp_out", layer)][0] for layer in range(n_layers)]).clone()
    mlp_in, activations = {}, {}
    for layer, tc in transcoders.items():
        x = acts[Site("mlp_in", layer)][0]
        mlp_in[layer] = x
        z = tc.encode(x)
        z[:zero_first] = 0
        activations[layer] = z
        errors[layer] -= (tc.decode(z) + tc.skip(x)).to(errors.dtype)
    embed = acts[Site("embed")][0]
    pos_embed = acts[Site("pos_embed")][0] if has_pos else None
    return ReplacementRun(
        tokens=tokens,
        logits=logits[0],
        frozen={site: acts[site] for site in _frozen_sites(n_layers)},
        mlp_in=mlp_in,
        activations=activations,
        errors=errors,
        embed=embed,
        pos_embed=pos_embed,
        rms=str(model.cfg.normalization_type).startswith("RMS"),
    )


@dataclasses.dataclass
class Sources:
    """The inputs of one batched replacement forward pass (``batch`` copies of the prompt).

    ``scale`` multiplies every source (1: the real run; 0: only biases remain, the affine offset).
    After the pass, ``grads`` holds the gradient reaching each source site: ``mlp_out.L`` (the
    residual write of MLP ``L``), ``embed``, ``pos_embed``.
    """

    batch: int
    scale: float = 1.0
    leaves: dict[Site, Tensor] = dataclasses.field(default_factory=dict)
    mlp_in: dict[int, Tensor] = dataclasses.field(default_factory=dict)

    def leaf(self, site: Site, like: Tensor) -> Tensor:
        value = torch.zeros_like(like, requires_grad=True)
        self.leaves[site] = value
        return value


def replacement_hooks(
    run: ReplacementRun, transcoders: Mapping[int, Transcoder], sources: Sources
) -> list[tuple[Site, SiteHook]]:
    """Hooks that turn the model into the replacement model for ``run`` (batch ``sources.batch``)."""
    n_layers = run.errors.shape[0]
    batch, scale = sources.batch, sources.scale
    resid: dict[Site, Tensor] = {}

    def frozen(site: Site) -> SiteHook:
        value = run.frozen[site]
        return lambda act, _site: value.expand(batch, *value.shape[1:]).to(act.dtype)

    def keep(act: Tensor, site: Site) -> Tensor:
        resid[site] = act
        return act

    def norm(read: Site, scale_site: Site) -> SiteHook:
        def hook(act: Tensor, _site: Site) -> Tensor:
            x = resid[read]
            centred = x if run.rms else x - x.mean(dim=-1, keepdim=True)
            return centred / run.frozen[scale_site].to(act.dtype)

        return hook

    def source(site: Site, value: Tensor) -> SiteHook:
        def hook(act: Tensor, _site: Site) -> Tensor:
            return scale * value.to(act.dtype).expand_as(act) + sources.leaf(site, act)

        return hook

    def mlp_in(layer: int) -> SiteHook:
        def hook(act: Tensor, _site: Site) -> Tensor:
            sources.mlp_in[layer] = act
            return act

        return hook

    def mlp_out(layer: int) -> SiteHook:
        tc = transcoders.get(layer)

        def hook(act: Tensor, site: Site) -> Tensor:
            out = scale * run.errors[layer].to(act.dtype).expand_as(act)
            if tc is not None:
                z = scale * run.activations[layer]
                out = out + tc.decode(z).to(act.dtype) + tc.skip(sources.mlp_in[layer]).to(act.dtype)
            return out + sources.leaf(site, act)

        return hook

    hooks: list[tuple[Site, SiteHook]] = [(Site("embed"), source(Site("embed"), run.embed))]
    if run.pos_embed is not None:
        hooks.append((Site("pos_embed"), source(Site("pos_embed"), run.pos_embed)))
    for layer in range(n_layers):
        hooks += [
            (Site("resid_pre", layer), keep),
            (Site("ln1_normalized", layer), norm(Site("resid_pre", layer), Site("ln1_scale", layer))),
            (Site("pattern", layer), frozen(Site("pattern", layer))),
            (Site("resid_mid", layer), keep),
            (Site("ln2_normalized", layer), norm(Site("resid_mid", layer), Site("ln2_scale", layer))),
        ]
        if layer in transcoders:
            hooks.append((Site("mlp_in", layer), mlp_in(layer)))
        hooks.append((Site("mlp_out", layer), mlp_out(layer)))
    last = Site("resid_post", n_layers - 1)
    hooks += [(last, keep), (Site("ln_final"), norm(last, Site("ln_final_scale")))]
    return hooks


def replacement_forward(
    model: HookedModel,
    run: ReplacementRun,
    transcoders: Mapping[int, Transcoder],
    sources: Sources,
    extra: Sequence[tuple[Site, SiteHook]] = (),
) -> Float[Tensor, "batch pos d_vocab"]:
    """The replacement model's logits on ``sources.batch`` copies of the prompt (grad enabled).

    ``extra``: hooks that run after the replacement hooks at their sites (e.g. reading a feature's
    pre-activation from ``mlp_in``).
    """
    tokens = run.tokens.expand(sources.batch, -1)
    with torch.enable_grad(), hooked(model, [*replacement_hooks(run, transcoders, sources), *extra]):
        return model(tokens)


def replacement_logits(
    model: HookedModel, run: ReplacementRun, transcoders: Mapping[int, Transcoder]
) -> Float[Tensor, "pos d_vocab"]:
    """The replacement model's logits on the prompt (equal to ``run.logits`` up to rounding)."""
    with torch.no_grad():
        return replacement_forward(model, run, transcoders, Sources(batch=1))[0]


def describe(run: ReplacementRun) -> dict[str, Any]:
    """Sizes of a run, for messages: positions, active features per layer, error norms."""
    return {
        "n_pos": run.n_pos,
        "active": {layer: int((z != 0).sum()) for layer, z in run.activations.items()},
        "error_norm": run.errors.norm(dim=-1).mean(dim=-1).tolist(),
    }
