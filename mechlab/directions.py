"""Directions from evidence: the vector in activation space that separates two sets of prompts.

Contrastive Activation Addition (Rimsky et al. 2024) reads a behaviour off *pairs* of prompts that
differ in it and little else ("The nurse …" / "The carpenter …"): the **difference of means** of
their activations at one layer, ``mean(a⁺) - mean(a⁻)``, is a direction the model represents the
difference along. Two other readings of the same evidence:

- **PCA of the differences**: the first principal component of the per-pair differences ``a⁺ - a⁻``
  (signed to agree with the mean difference): the axis along which the pairs differ most
  consistently, less pulled by a few pairs with large differences;
- **a probe's direction**: the weight vector of a logistic-regression probe trained to tell the two
  sets apart (``mechlab.train_probes``; ``from_probe``).

A direction is only as good as its **separation on held-out pairs**: projected onto it, does the
positive prompt of a pair not used to find it land above its negative one (``accuracy``), and by how
many pooled standard deviations (``effect_size``)? ``scan`` measures that at every layer.

``spread`` is the standard deviation of the training activations' projections onto the unit
direction: steering "by ``s``" adds ``s · spread · u``, so ``s`` counts standard deviations of what
the model itself produces along ``u`` (``mechlab.steer``'s ``unit``).

Pairs files are JSON Lines with ``positive`` and ``negative`` fields, one pair a line.
"""

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.errors import InputError
from mechlab.files import read_text
from mechlab.probes.data import collect_activations
from mechlab.probes.probes import ProbeResult
from mechlab.render.figures import lines
from mechlab.render.page import Page
from mechlab.sites import Site, validate
from mechlab.types import HookedModel

Method = Literal["mean", "pca"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Contrastive prompt pairs: ``positive[i]`` and ``negative[i]`` differ in the behaviour only."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.positive) != len(self.negative):
            raise ValueError(
                f"Got {len(self.positive)} positive and {len(self.negative)} negative prompts; give "
                "them in pairs."
            )
        if len(self.positive) < 2:
            raise ValueError(f"A direction needs at least 2 pairs; got {len(self.positive)}.")
        if any(not t.strip() for t in (*self.positive, *self.negative)):
            raise ValueError("Some prompts are empty; remove them.")

    def __len__(self) -> int:
        return len(self.positive)

    def split(self, held_out: float, seed: int = 0) -> tuple["Pairs", "Pairs"]:
        """``(train, held_out)``: a seeded random ``held_out`` fraction of the pairs set aside."""
        if not 0 < held_out < 1:
            raise InputError(f"held_out must be a fraction between 0 and 1, got {held_out}.")
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        n = min(max(2, round(held_out * len(self))), len(self) - 2)
        if n < 2:
            raise InputError(f"{len(self)} pairs are too few to hold some out; give at least 4.")
        test, train = sorted(order[:n]), sorted(order[n:])
        return self._subset(train, "train"), self._subset(test, "held out")

    def _subset(self, rows: list[int], what: str) -> "Pairs":
        return Pairs(
            tuple(self.positive[i] for i in rows),
            tuple(self.negative[i] for i in rows),
            f"{self.name} ({what})" if self.name else what,
        )


def load_pairs(path: str | Path) -> Pairs:
    """Read a JSON Lines file of ``{"positive": ..., "negative": ...}`` pairs.

    Raises:
        InputError: unreadable file, a line that is not a JSON object with both fields, too few pairs.
    """
    path = Path(path).expanduser()
    text = read_text(path, "pairs file")
    positive, negative = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path} line {number} is not JSON: {error.msg}.") from error
        if not isinstance(row, dict) or not {"positive", "negative"} <= set(row):
            raise InputError(
                f'{path} line {number}: expected {{"positive": "...", "negative": "..."}}, got {line[:80]!r}.'
            )
        positive.append(str(row["positive"]))
        negative.append(str(row["negative"]))
    try:
        return Pairs(tuple(positive), tuple(negative), name=path.name)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from error


@dataclasses.dataclass(frozen=True)
class Separation:
    """How well a direction separates held-out pairs.

    Attributes:
        n: held-out pairs.
        accuracy: the fraction whose positive prompt projects above its negative one.
        effect_size: mean projection difference over the pooled standard deviation of the projections.
    """

    n: int
    accuracy: float
    effect_size: float


@dataclasses.dataclass(frozen=True, eq=False)
class Direction:
    """A unit direction in activation space, where it was read, and how it was found.

    Attributes:
        vector: the unit direction ``[d_model]`` (from negative toward positive).
        site: the activation it was read from (``resid_post`` at a layer).
        method: ``mean`` (difference of means), ``pca`` (of pair differences) or ``probe``.
        spread: std of the training activations' projections onto ``vector`` (the steering unit σ).
        gap: mean projection of the positive prompts minus the negative ones, on the training pairs.
        separation: on held-out pairs, when there were any.
        source: what it came from (a pairs file, a probe).
    """

    vector: Float[Tensor, " d_model"]
    site: Site
    method: str
    spread: float
    gap: float
    separation: Separation | None = None
    source: str = ""

    @property
    def layer(self) -> int:
        return int(self.site.layer or 0)

    def summary(self) -> str:
        text = (
            f"Direction at {self.site} ({self.method} of {self.source or 'pairs'}): training pairs differ "
            f"by {self.gap:.3g} along it, {self.gap / self.spread:.2f}σ (σ = {self.spread:.3g})"
        )
        if self.separation is not None:
            s = self.separation
            text += (
                f"; on {s.n} held-out pairs the positive prompt projects higher in {s.accuracy:.0%} "
                f"(effect size {s.effect_size:.2f})"
            )
        return text + "."

    def save(self, path: str | Path) -> Path:
        """Write the direction as a safetensors file (the vector and, as metadata, the rest)."""
        from safetensors.torch import save

        from mechlab.files import atomic_write

        meta = {
            "site": str(self.site),
            "method": self.method,
            "spread": repr(self.spread),
            "gap": repr(self.gap),
            "source": self.source,
        }
        if self.separation is not None:
            meta["separation"] = json.dumps(dataclasses.asdict(self.separation))
        return atomic_write(Path(path), save({"direction": self.vector.float().contiguous()}, metadata=meta))


def load_direction(path: str | Path) -> Direction:
    """Read a direction written by ``Direction.save``.

    Raises:
        InputError: the file is not one.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            vector = handle.get_tensor("direction")
    except (OSError, SafetensorError) as error:
        raise InputError(f"Cannot read a direction from {path}: {error}.") from error
    if "site" not in meta or vector.ndim != 1:
        raise InputError(f"{path} is not a direction written by mechlab (Direction.save).")
    separation = meta.get("separation")
    return Direction(
        vector=vector,
        site=Site.parse(meta["site"]),
        method=meta.get("method", "?"),
        spread=float(meta.get("spread", "1")),
        gap=float(meta.get("gap", "0")),
        separation=Separation(**json.loads(separation)) if separation else None,
        source=meta.get("source", ""),
    )


def from_activations(
    positive: Float[Tensor, "n d_model"],
    negative: Float[Tensor, "n d_model"],
    *,
    method: Method = "mean",
) -> tuple[Float[Tensor, " d_model"], float, float]:
    """The unit direction from paired activations, the spread σ of all of them along it, and the
    mean gap ``mean(positive·u) - mean(negative·u)``.

    Raises:
        InputError: shapes that do not pair up, an unknown method, or no difference at all.
    """
    if positive.shape != negative.shape or positive.ndim != 2:
        raise InputError(
            f"Positive and negative activations must both be [pairs, d_model]; got "
            f"{tuple(positive.shape)} and {tuple(negative.shape)}."
        )
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    diffs = positive.double() - negative.double()
    mean = diffs.mean(0)
    if method == "mean":
        vector = mean
    else:
        # The first right-singular vector of the uncentred differences, signed like the mean.
        _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
        vector = vh[0] * torch.sign(vh[0] @ mean) if float(vh[0] @ mean) != 0 else vh[0]
    norm = float(vector.norm())
    if norm == 0:
        raise InputError("The positive and negative activations do not differ; no direction to take.")
    unit = vector / norm
    projections = torch.cat([positive.double() @ unit, negative.double() @ unit])
    gap = float((positive.double() @ unit).mean() - (negative.double() @ unit).mean())
    return unit.float(), float(projections.std()), gap


def separation(
    direction: Float[Tensor, " d_model"],
    positive: Float[Tensor, "n d_model"],
    negative: Float[Tensor, "n d_model"],
) -> Separation:
    """How well ``direction`` separates paired activations (see ``Separation``)."""
    u = direction.double() / direction.double().norm()
    p, n = positive.double() @ u, negative.double() @ u
    pooled = float(torch.cat([p - p.mean(), n - n.mean()]).std())
    effect = float(p.mean() - n.mean()) / pooled if pooled > 0 else float("inf")
    return Separation(n=len(p), accuracy=float((p > n).double().mean()), effect_size=effect)


def _activations(
    model: HookedModel, pairs: Pairs, sites: list[Site]
) -> tuple[Float[Tensor, "layer n d_model"], Float[Tensor, "layer n d_model"]]:
    both = collect_activations(model, [*pairs.positive, *pairs.negative], sites, position="last")
    return both[:, : len(pairs)], both[:, len(pairs) :]


def from_pairs(
    model: HookedModel,
    pairs: Pairs,
    layer: int,
    *,
    kind: str = "resid_post",
    method: Method = "mean",
    held_out: Pairs | float | None = 0.25,
    seed: int = 0,
) -> Direction:
    """The direction at ``Site(kind, layer)`` that separates ``pairs`` (at each prompt's last token).

    Args:
        model: the model.
        pairs: contrastive pairs.
        layer: where to read the activations.
        kind: a per-layer vector site kind (``resid_post`` by default).
        method: ``mean`` (difference of means) or ``pca`` (first component of the differences).
        held_out: pairs to measure the separation on: other ``Pairs``, a fraction of ``pairs`` to
            set aside (seeded by ``seed``), or ``None`` for no held-out measurement.
        seed: for the held-out split.

    Raises:
        InputError, SiteError: a bad layer or kind, too few pairs, or pairs that do not differ.
    """
    return scan(model, pairs, [layer], kind=kind, method=method, held_out=held_out, seed=seed).directions[0]


@dataclasses.dataclass(frozen=True, eq=False)
class DirectionScan:
    """A direction at each of several layers, with its held-out separation (when measured)."""

    directions: tuple[Direction, ...]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(d.layer for d in self.directions)

    def at(self, layer: int) -> Direction:
        for direction in self.directions:
            if direction.layer == layer:
                return direction
        raise InputError(f"No direction at layer {layer}; scanned layers: {list(self.layers)}.")

    def best(self) -> Direction:
        """The direction with the largest held-out effect size (training gap/σ without held-out pairs)."""
        return max(
            self.directions,
            key=lambda d: d.separation.effect_size if d.separation is not None else d.gap / d.spread,
        )

    def plot(self) -> Figure:
        series: dict[str, list[float]] = {"training gap / σ": [d.gap / d.spread for d in self.directions]}
        if all(d.separation is not None for d in self.directions):
            series["held-out effect size"] = [d.separation.effect_size for d in self.directions]  # type: ignore[union-attr]
        return lines(
            series,
            title="How far apart the pairs lie along each layer's direction",
            xlabel="layer",
            ylabel="standard deviations",
            x=[float(layer) for layer in self.layers],
        )

    def add_to(self, page: Page, *, title: str = "Directions by layer") -> Page:
        page.section(title, self.best().summary()).figure(self.plot(), alt="separation by layer")
        return page

    def _repr_html_(self) -> str:
        return self.add_to(Page("Directions")).body()


def scan(
    model: HookedModel,
    pairs: Pairs,
    layers: Sequence[int] | None = None,
    *,
    kind: str = "resid_post",
    method: Method = "mean",
    held_out: Pairs | float | None = 0.25,
    seed: int = 0,
) -> DirectionScan:
    """``from_pairs`` at each of ``layers`` (default: all), from one pass over the prompts."""
    chosen = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    if not chosen:
        raise InputError("No layers to scan: pass layers=None (all) or a non-empty list.")
    sites = [validate(Site(kind, layer), model) for layer in chosen]
    train, test = pairs, held_out if isinstance(held_out, Pairs) else None
    if isinstance(held_out, float):
        train, test = pairs.split(held_out, seed)
    pos, neg = _activations(model, train, sites)
    tests = _activations(model, test, sites) if test is not None else None
    found = []
    for row, site in enumerate(sites):
        vector, spread, gap = from_activations(pos[row], neg[row], method=method)
        measured = separation(vector, tests[0][row], tests[1][row]) if tests is not None else None
        found.append(Direction(vector, site, method, spread, gap, measured, pairs.name))
    return DirectionScan(tuple(found))


def from_probe(probe: ProbeResult, layer: int) -> Direction:
    """A binary probe's direction at ``layer`` (toward its second class), with its spread σ."""
    row = probe._row(layer)
    return Direction(
        vector=probe.direction(layer).float(),
        site=Site(probe.site_kind, layer),
        method="probe",
        spread=float(probe.projection_std[row]),
        gap=float("nan"),
        source=probe.dataset,
    )


def from_readout(model: HookedModel, positive: str, negative: str) -> Direction:
    """The residual-stream direction the final logit difference ``positive − negative`` is read through:
    ``g ⊙ (W_U[positive] − W_U[negative])`` (``g`` the final norm's scale), at the last block's output.

    Taking it out of the stream (``mechlab.fix.ablation``) removes that logit difference everywhere,
    whatever the prompt: a blunt fix that says nothing about why the model preferred one token.

    Raises:
        InputError: a token that is not a single token of the model's vocabulary.
    """
    from mechlab.tokens import single_token

    a, b = single_token(model, positive), single_token(model, negative)
    norm_module = getattr(model, "ln_final", None)
    scale = getattr(norm_module, "weight", getattr(norm_module, "w", None))
    w_u = cast(Any, model).W_U
    vector = (w_u[:, a] - w_u[:, b]).detach().float()
    if scale is not None:
        vector = vector * scale.detach().float()
    norm = float(vector.norm())
    if norm == 0:
        raise InputError(
            f"{positive!r} and {negative!r} have the same unembedding; no direction separates them."
        )
    return Direction(
        vector=vector / norm,
        site=Site("resid_post", model.cfg.n_layers - 1),
        method="readout",
        spread=1.0,
        gap=float("nan"),
        source=f"unembedding {positive!r} − {negative!r}",
    )
