"""Steering and directional ablation through hooks, measured by a behaviour and by KL on neutral text.

Two ways to act on a direction ``u`` (unit) in the residual stream:

- **steering** adds ``s · σ · u`` at one site, every position (``σ`` the spread of the activations
  along ``u``, so ``s`` counts standard deviations): what a llama.cpp control vector does at run time;
- **directional ablation** removes ``u`` from everything written into the residual stream, at every
  layer and position: the embeddings and each block's attention and MLP outputs become
  ``x - (x·u) u``, so the stream never holds a component along ``u``. Editing the writers' weights
  the same way (``mechlab.fix.bake``) gives the same model, which is what makes this a fix a runtime
  without hooks can run. ``layers`` restricts the ablation to what some blocks write.
- **mean ablation** puts a constant back instead of nothing: each writer's component along ``u``
  becomes its average over reference text (``mean_values``), ``x - (x·u) u + μ u``, so later blocks
  read along ``u`` what they read on average rather than a value they never see. ``calibrate`` then
  moves the last writer's constant so a behaviour averages 0 on its (training) prompts. In the weights
  this is a bias on each writer (``mechlab.fix.bake`` adds them where the runtime reads them).

Any fix costs something elsewhere. ``steering_sweep`` measures both sides over a strength sweep: the
behaviour (a ``LogitGap``: ``logit(a) - logit(b)`` after each prompt) and the mean KL divergence of
the next-token distribution on neutral text, clean ‖ intervened, in nats per token.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.directions import Direction
from mechlab.errors import MSG_DIRECTION_WIDTH, MSG_LAYER_RANGE, InputError
from mechlab.hooks import SiteHook, hooked
from mechlab.render.page import Page
from mechlab.sites import Site
from mechlab.tokens import as_tokens, single_token
from mechlab.types import HookedModel

DEFAULT_STRENGTHS = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)


@runtime_checkable
class Behaviour(Protocol):
    """A number per prompt, measured with hooks (``LogitGap`` is one)."""

    def measure(self, model: HookedModel, hooks: dict[Site, SiteHook] | None = None) -> Tensor: ...


def _unit(model: HookedModel, direction: Tensor | Direction) -> Tensor:
    vector = direction.vector if isinstance(direction, Direction) else direction
    if vector.ndim != 1 or vector.shape[0] != model.cfg.d_model:
        raise InputError(MSG_DIRECTION_WIDTH.format(shape=tuple(vector.shape), d_model=model.cfg.d_model))
    norm = float(vector.float().norm())
    if norm == 0 or norm != norm:
        raise InputError(f"The direction must be a finite, non-zero vector; its norm is {norm}.")
    return (vector.float() / norm).to(model.cfg.device)


def writer_sites(
    model: HookedModel, *, layers: Sequence[int] | None = None, embeddings: bool = True
) -> list[Site]:
    """The sites whose outputs are added to the residual stream, in the order they write: the
    embeddings (with ``embeddings``), then each of ``layers``' attention and MLP outputs.

    Raises:
        InputError: a layer out of range.
    """
    n_layers = model.cfg.n_layers
    chosen = list(range(n_layers)) if layers is None else sorted(set(layers))
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad or not chosen:
        raise InputError(MSG_LAYER_RANGE.format(layers=bad or "none", n_layers=n_layers, last=n_layers - 1))
    sites = []
    if embeddings:
        sites.append(Site("embed"))
        if getattr(model.cfg, "positional_embedding_type", "") == "standard":  # learned, added (GPT-2)
            sites.append(Site("pos_embed"))
    for layer in chosen:
        sites += [Site("attn_out", layer), Site("mlp_out", layer)]
    return sites


def _values(sites: list[Site], values: Mapping[Site, float] | None) -> dict[Site, float]:
    if values is None:
        return dict.fromkeys(sites, 0.0)
    unknown = [str(site) for site in values if site not in sites]
    if unknown:
        raise InputError(
            f"Values were given for {', '.join(unknown)}, which are not among the ablated writers "
            f"({', '.join(map(str, sites))}). Compute them for the same layers (mean_values)."
        )
    bad = [str(site) for site, value in values.items() if not math.isfinite(value)]
    if bad:
        raise InputError(f"The values for {', '.join(bad)} are not finite numbers.")
    return {site: float(values.get(site, 0.0)) for site in sites}


def ablation_hooks(
    model: HookedModel,
    direction: Tensor | Direction,
    *,
    layers: Sequence[int] | None = None,
    embeddings: bool = True,
    values: Mapping[Site, float] | None = None,
) -> dict[Site, SiteHook]:
    """Hooks (for ``mechlab.hooked``) that project ``direction`` out of what ``layers`` (default: all)
    write into the residual stream, and with ``embeddings`` out of the embeddings. ``values`` (from
    ``mean_values``) puts a constant component back per writer (mean ablation); absent writers get 0.

    Raises:
        InputError: a direction of the wrong width, a layer out of range, or values for other sites.
    """
    u = _unit(model, direction)
    kept = _values(writer_sites(model, layers=layers, embeddings=embeddings), values)

    def replace(value: float) -> SiteHook:
        def hook(act: Tensor, _: Site) -> Tensor:
            w = u.to(act.dtype)
            return act - ((act @ w)[..., None] - value) * w

        return hook

    return {site: replace(value) for site, value in kept.items()}


@torch.no_grad()
def mean_values(
    model: HookedModel,
    direction: Tensor | Direction,
    texts: Sequence[str | Tensor],
    *,
    layers: Sequence[int] | None = None,
    embeddings: bool = True,
) -> dict[Site, float]:
    """Each writer's mean component along ``direction`` over the tokens of ``texts`` (strings or token
    ids; the first token, BOS, left out: its activations are far from every other token's), read in
    the clean model.

    Raises:
        InputError: no texts, or see ``writer_sites``.
    """
    if not texts:
        raise InputError("Mean ablation needs reference texts to average over; none were given.")
    u = _unit(model, direction)
    sites = writer_sites(model, layers=layers, embeddings=embeddings)
    sums = dict.fromkeys(sites, 0.0)
    count = 0

    def add(site: Site) -> SiteHook:
        def hook(act: Tensor, _: Site) -> Tensor:
            sums[site] += float((act[:, 1:].float() @ u).sum())
            return act

        return hook

    with hooked(model, {site: add(site) for site in sites}):
        for text in texts:
            tokens = as_tokens(model, text).to(model.cfg.device)
            model(tokens)
            count += tokens.shape[1] - 1
    if count == 0:
        raise InputError("The reference texts hold no token after BOS to average over.")
    return {site: total / count for site, total in sums.items()}


def calibrate(
    model: HookedModel,
    direction: Tensor | Direction,
    values: Mapping[Site, float],
    behaviour: Behaviour,
    *,
    iterations: int = 6,
) -> dict[Site, float]:
    """``values`` with the last writer's constant moved so ``behaviour`` averages 0 over its prompts
    under mean ablation (secant steps from two trial constants; the behaviour is near-linear in it).

    Raises:
        InputError: ``values`` is empty, or see ``ablation_hooks``.
    """
    if not values:
        raise InputError("Calibration moves the last writer's value; no values were given (mean_values).")
    last = list(values)[-1]
    layers = sorted({site.layer for site in values if site.layer is not None})
    embeddings = any(site.layer is None for site in values)

    def mean_gap(shift: float) -> float:
        shifted = {**values, last: values[last] + shift}
        hooks = ablation_hooks(model, direction, layers=layers, embeddings=embeddings, values=shifted)
        return float(behaviour.measure(model, hooks).mean())

    x0, x1 = 0.0, -sum(values.values())  # 0, and the shift that zeroes the mean stream along u
    y0, y1 = mean_gap(x0), mean_gap(x1)
    for _ in range(iterations):
        if y1 == y0 or abs(y1) < 1e-4:
            break
        x0, y0, x1 = x1, y1, x1 - y1 * (x1 - x0) / (y1 - y0)
        y1 = mean_gap(x1)
    best = x1 if abs(y1) <= abs(y0) else x0
    return {**values, last: values[last] + best}


def steering_hooks(model: HookedModel, site: Site, vector: Float[Tensor, " d_model"]) -> dict[Site, SiteHook]:
    """A hook that adds ``vector`` (as given, not normalised) at ``site``, every position."""
    if vector.ndim != 1 or vector.shape[0] != model.cfg.d_model:
        raise InputError(MSG_DIRECTION_WIDTH.format(shape=tuple(vector.shape), d_model=model.cfg.d_model))
    added = vector.float().to(model.cfg.device)

    def add(act: Tensor, _: Site) -> Tensor:
        return act + added.to(act.dtype)

    return {site: add}


@dataclasses.dataclass(frozen=True)
class LogitGap:
    """``logit(positive) - logit(negative)`` for the next token after each prompt.

    Attributes:
        prompts: the prompts (their last token predicts the next one).
        positive, negative: the two single-token continuations, e.g. ``" she"`` and ``" he"``.
        name: what the prompts are (for summaries).
    """

    prompts: tuple[str, ...]
    positive: str
    negative: str
    name: str = ""

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("A behaviour needs at least one prompt.")

    @property
    def label(self) -> str:
        return f"logit({self.positive!r}) − logit({self.negative!r})"

    def tokens(self, model: HookedModel) -> tuple[list[Tensor], int, int]:
        """The prompts' token ids and the two continuation ids."""
        encoded = [model.to_tokens(p)[0].cpu() for p in self.prompts]
        return encoded, single_token(model, self.positive), single_token(model, self.negative)

    def measure(
        self, model: HookedModel, hooks: dict[Site, SiteHook] | None = None, batch_size: int = 32
    ) -> Float[Tensor, " prompt"]:
        """The gap after each prompt."""
        encoded, a, b = self.tokens(model)
        logits = last_logits(model, encoded, hooks, batch_size=batch_size)
        return logits[:, a] - logits[:, b]


@torch.no_grad()
def last_logits(
    model: HookedModel,
    encoded: Sequence[Tensor],
    hooks: dict[Site, SiteHook] | None = None,
    *,
    batch_size: int = 32,
) -> Float[Tensor, "prompt d_vocab"]:
    """The next-token logits after each token-id sequence, in right-padded batches (a causal model's
    earlier positions never see the padding)."""
    out = []
    with hooked(model, hooks or {}):
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            lengths = torch.tensor([len(e) for e in chunk])
            batch = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)
            for i, e in enumerate(chunk):
                batch[i, : len(e)] = e
            logits = model(batch.to(model.cfg.device))[torch.arange(len(chunk)), lengths - 1]
            out.append(logits.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def next_token_log_probs(
    model: HookedModel, tokens: Tensor, hooks: dict[Site, SiteHook] | None = None
) -> Float[Tensor, "pos d_vocab"]:
    """Log-probabilities of the next token at every position of one sequence of token ids."""
    with hooked(model, hooks or {}):
        logits = model(tokens.reshape(1, -1).to(model.cfg.device))[0]
    return torch.log_softmax(logits.float().cpu(), dim=-1)


def mean_kl(reference: Float[Tensor, "pos d_vocab"], other: Float[Tensor, "pos d_vocab"]) -> float:
    """Mean over positions of ``KL(reference ‖ other)``, from log-probabilities, in nats."""
    ref, out = reference.double(), other.double()
    return float((ref.exp() * (ref - out)).sum(-1).mean())


@dataclasses.dataclass(frozen=True, eq=False)
class FixSweep:
    """A behaviour and the KL on neutral text, under steering at several strengths and under ablation.

    Attributes:
        site: where the steering vector was added; ``unit`` its step (σ).
        strengths: multiples of ``unit`` added.
        behaviour: the behaviour's name; ``gap`` ``[strength, prompt]`` its values.
        clean: ``[prompt]`` without intervention; ``ablated``: ``[prompt]`` with the direction ablated.
        kl: ``[strength]`` mean KL on neutral text; ``ablated_kl`` the same under ablation.
        n_neutral: neutral-text tokens the KL is averaged over.
    """

    site: Site
    unit: float
    strengths: tuple[float, ...]
    behaviour: str
    gap: Float[Tensor, "strength prompt"]
    clean: Float[Tensor, " prompt"]
    ablated: Float[Tensor, " prompt"]
    kl: Float[Tensor, " strength"]
    ablated_kl: float
    n_neutral: int

    @property
    def clean_abs(self) -> float:
        return float(self.clean.abs().mean())

    @property
    def ablated_abs(self) -> float:
        return float(self.ablated.abs().mean())

    def summary(self) -> str:
        return (
            f"{self.behaviour}: mean |gap| {self.clean_abs:.3f} clean, {self.ablated_abs:.3f} with the "
            f"direction ablated ({1 - self.ablated_abs / self.clean_abs:+.0%} fall) at a KL of "
            f"{self.ablated_kl:.4f} nats/token on {self.n_neutral} neutral tokens; steering at {self.site} "
            f"moves the mean gap from {float(self.gap[0].mean()):+.3f} ({self.strengths[0]:+g}σ) to "
            f"{float(self.gap[-1].mean()):+.3f} ({self.strengths[-1]:+g}σ), σ = {self.unit:.3g}."
        )

    def plot(self) -> Figure:
        fig = Figure(figsize=(9, 3.5), layout="constrained")
        left, right = fig.subplots(1, 2)
        x = list(self.strengths)
        left.plot(x, self.gap.mean(1).numpy(), marker="o", label="mean gap")
        left.plot(x, self.gap.abs().mean(1).numpy(), marker="o", label="mean |gap|")
        left.axhline(self.ablated_abs, color="gray", linestyle="--", label="|gap| ablated")
        left.set_xlabel("added multiple of σ")
        left.set_ylabel(self.behaviour)
        left.legend(fontsize=8)
        right.plot(x, self.kl.numpy(), marker="o", color="C3", label="steered")
        right.axhline(self.ablated_kl, color="gray", linestyle="--", label="ablated")
        right.set_yscale("symlog", linthresh=1e-3)
        right.set_xlabel("added multiple of σ")
        right.set_ylabel("KL on neutral text (nats/token)")
        right.legend(fontsize=8)
        fig.suptitle(f"Steering at {self.site} and ablating the direction")
        return fig

    def add_to(self, page: Page, *, title: str = "Steering and ablation") -> Page:
        page.section(title, self.summary()).figure(self.plot(), alt="behaviour and KL against strength")
        return page

    def _repr_html_(self) -> str:
        return self.add_to(Page("Steering and ablation")).body()


def steering_sweep(
    model: HookedModel,
    direction: Direction,
    behaviour: LogitGap,
    neutral: Tensor,
    *,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    layers: Sequence[int] | None = None,
    embeddings: bool = True,
    values: Mapping[Site, float] | None = None,
) -> FixSweep:
    """Steer along ``direction`` at its site by each strength (in units of its spread σ) and ablate
    it (``ablation_hooks``, with ``values`` for mean ablation), measuring ``behaviour`` and the KL on
    ``neutral`` token ids."""
    u = _unit(model, direction)
    reference = next_token_log_probs(model, neutral)
    rows, kls = [], []
    for strength in strengths:
        hooks = steering_hooks(model, direction.site, u * strength * direction.spread)
        rows.append(behaviour.measure(model, hooks))
        kls.append(mean_kl(reference, next_token_log_probs(model, neutral, hooks)))
    ablate = ablation_hooks(model, u, layers=layers, embeddings=embeddings, values=values)
    return FixSweep(
        site=direction.site,
        unit=direction.spread,
        strengths=tuple(float(s) for s in strengths),
        behaviour=behaviour.label,
        gap=torch.stack(rows),
        clean=behaviour.measure(model),
        ablated=behaviour.measure(model, ablate),
        kl=torch.tensor(kls),
        ablated_kl=mean_kl(reference, next_token_log_probs(model, neutral, ablate)),
        n_neutral=int(neutral.numel()),
    )
