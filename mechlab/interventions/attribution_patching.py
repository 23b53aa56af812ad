"""Attribution patching (AtP): a first-order estimate of every activation-patching result at once.

Activation patching needs one forward pass per patched site. Attribution patching (Nanda 2023;
Syed et al. 2023) replaces each of them by a linear approximation around the patched run:

    metric(patched) ≈ metric(target) + ∇_a metric(target) · (a_source − a_target)

so two forward passes (clean, corrupted) and one backward pass give an estimate for every site of
every kind. When denoising, the target is the corrupted run and the source the clean run; when
noising, the reverse. The estimate is good where the metric is close to linear in the activation
(head outputs, attention outputs, values) and poor where it is not (the residual stream at layer 0,
early MLPs, attention patterns that saturate); ``agreement`` measures exactly that against real
activation patching, per component kind.

``attribution_patch`` returns a ``PatchResult`` on the same grid as ``patch`` with
``method="attribution"``, so every view (``top``, ``plot``, ``to_dataframe``) works the same.
Its two runs (the target's forward and backward pass, the source's forward pass) are independent
tasks of an executor (``mechlab.executors``). They are not split by prompt: a metric may hold
per-prompt data (answer ids, reference logits) or return one number for the whole batch, and a mean
ablation averages over every prompt, so a prompt's estimate can depend on the others.
On a single prompt with an ``Ablation`` baseline it ranks heads for "why this token and not the
runner-up": ``attribution_patch(model, prompt, Ablation("mean"), "z", LogitDiff(chosen, runner_up))``
(an ablation implies ``direction="noise"``).
"""

import dataclasses
import math
import time
from collections.abc import Sequence
from functools import partial
from typing import TypeAlias

import torch
from torch import Tensor

from mechlab.activations import capture
from mechlab.errors import InputError
from mechlab.executors import Executor, resolve_executor
from mechlab.hooks import differentiable, gradients
from mechlab.interventions.inputs import Ablation, Direction, TokensLike, pos_labels, split_pair
from mechlab.interventions.result import PatchResult
from mechlab.interventions.scoring import MetricLike, Scorer, scorer
from mechlab.interventions.sweep import SitesLike, resolve, whole_sites
from mechlab.models.quantized import exact_gradients
from mechlab.render import html
from mechlab.sites import Site
from mechlab.types import HookedModel, Tokens

# One run's metric per prompt ``[batch]``, and its activations and gradients by site.
Run: TypeAlias = tuple[Tensor, dict[Site, Tensor], dict[Site, Tensor]]


def grad_site(site: Site) -> Site:
    """Where the gradient of a site is read: ``resid_mid``'s hook only feeds the MLP, so its full
    gradient (MLP and skip path) is the gradient at ``attn_out`` of the same layer."""
    return Site("attn_out", site.layer) if site.kind == "resid_mid" else site


def forward_backward(model: HookedModel, tokens: Tokens, sites: Sequence[Site], score: Scorer) -> Run:
    """One forward pass keeping ``sites`` and one backward pass of the metric to them.

    Returns:
        the metric per prompt ``[batch]``, activations and gradients by (full) site.

    Raises:
        SiteError: the metric does not depend on a site's hooked activation.
    """
    grad_sites = list(dict.fromkeys(grad_site(s) for s in sites))
    with differentiable(model, [*sites, *grad_sites]) as acts:
        value = score.baseline(model(tokens))
        grads = gradients(value, acts, grad_sites)
    values = {s: acts[s].detach() for s in sites}
    return value.detach(), values, {s: grads[grad_site(s)] for s in sites}


@dataclasses.dataclass(frozen=True)
class Pass:
    """One run of attribution patching: ``tokens`` forward, and backward too for the target run."""

    tokens: Tokens
    backward: bool


def run_pass(model: HookedModel, sites: Sequence[Site], score: Scorer, task: Pass) -> Run:
    """The metric per prompt ``[batch]``, the activations and (for a backward pass, else none) the
    gradients at ``sites``."""
    if task.backward:
        return forward_backward(model, task.tokens, sites, score)
    acts = capture(model, task.tokens, sites, max_bytes=None)
    assert acts.logits is not None
    return score.baseline(acts.logits), {s: acts[s] for s in sites}, {}


@exact_gradients
def attribution_patch(
    model: HookedModel,
    clean: TokensLike,
    corrupted: TokensLike | Ablation,
    sites: SitesLike,
    metric: MetricLike,
    *,
    direction: Direction | None = None,
    executor: Executor | str | None = None,
) -> PatchResult:
    """Estimate ``patch(...)`` for every site from 2 forward passes and 1 backward pass.

    Args:
        model: a HookedTransformer-protocol model.
        clean, corrupted, sites, metric, direction: as for ``mechlab.patch``; ``corrupted`` may be
            an ``Ablation`` (the direction is then ``"noise"``).
        executor: runs the target and source passes, one task each (``mechlab.executors``;
            default: in this process).

    Returns:
        A ``PatchResult`` (``method="attribution"``) whose values are the estimated patched metric.
    """
    started = time.perf_counter()
    clean_tokens, corrupted_tokens, ablation, direction = split_pair(model, clean, corrupted, direction)
    plan = resolve(model, sites, pos_labels(model, clean_tokens[0]))
    score = scorer(metric, int(clean_tokens.shape[1]))
    hook_sites = whole_sites(plan)

    denoise = direction == "denoise"
    target_tokens = corrupted_tokens if denoise and corrupted_tokens is not None else clean_tokens
    tasks = [Pass(target_tokens, backward=True)]
    if ablation is None:
        source_tokens = clean_tokens if denoise else corrupted_tokens
        assert source_tokens is not None
        tasks.append(Pass(source_tokens, backward=False))
    runs = resolve_executor(executor).map(partial(run_pass, model, hook_sites, score), tasks)
    target_metric, target, grads = runs[0]
    if ablation is not None:
        sources = {s: ablation.source(target[s], s.pos_axis) for s in hook_sites}
        clean_metric, corrupted_metric = target_metric, None
    else:
        source_metric, sources, _ = runs[1]
        pair = (source_metric, target_metric)
        clean_metric, corrupted_metric = pair if denoise else pair[::-1]

    products = {s: grads[s] * (sources[s] - target[s]) for s in hook_sites}
    estimates = torch.stack(
        [
            target_metric + sum(_contribution(products[s.whole], s) for s in variant)
            for variant in plan.variants
        ]
    )
    return PatchResult.from_plan(
        plan,
        estimates,
        clean_metric,
        corrupted_metric,
        direction=direction,
        method="attribution",
        metric=score.describe(),
        seconds=time.perf_counter() - started,
    )


def _contribution(product: Tensor, site: Site) -> Tensor:
    """Sum of ``grad · delta`` over the site's slice, per prompt ``[batch]``."""
    part = product[site.index(product)]
    return part.reshape(part.shape[0], -1).sum(-1)


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Pearson correlation between two results' effects, per component kind.

    ``rows`` holds ``(kind, n_cells, r)``; ``r`` is NaN when either side is constant.
    """

    rows: tuple[tuple[str, int, float], ...]

    def __getitem__(self, kind: str) -> float:
        for name, _, r in self.rows:
            if name == kind:
                return r
        raise KeyError(f"No cells of kind {kind!r}; kinds: {', '.join(k for k, _, _ in self.rows)}.")

    def __str__(self) -> str:
        return "\n".join(f"{kind:<10} n={n:<5} r={r:.3f}" for kind, n, r in self.rows)

    def _repr_html_(self) -> str:
        rows = [(kind, n, f"{r:.3f}") for kind, n, r in self.rows]
        return html.table(["component", "cells", "Pearson r"], rows, caption="agreement per component kind")

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {kind: {"n": n, "r": r} for kind, n, r in self.rows}


def _results(results: PatchResult | Sequence[PatchResult]) -> list[PatchResult]:
    return [results] if isinstance(results, PatchResult) else list(results)


def _cells(results: list[PatchResult]) -> dict[tuple[Site, ...], float]:
    out: dict[tuple[Site, ...], float] = {}
    for result in results:
        for sites, value in zip(result.sites, result.delta.flatten().tolist(), strict=True):
            out[sites] = value
    return out


def _check_comparable(results: list[PatchResult]) -> None:
    """Raise InputError unless every result patched in one direction with one metric."""
    settings = sorted({(r.direction, r.metric) for r in results})
    if len(settings) > 1:
        found = "; ".join(f"direction={d!r}, metric {m}" for d, m in settings)
        raise InputError(
            f"agreement compares results of one direction and one metric, got: {found}. Run the "
            "estimate and the reference with the same direction= and metric."
        )


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (NaN when either sequence is constant or shorter than 2)."""
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    if len(a) < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else math.nan


def agreement(
    estimate: PatchResult | Sequence[PatchResult], reference: PatchResult | Sequence[PatchResult]
) -> Agreement:
    """Pearson r between an estimate (AtP) and reference activation patching, per component kind.

    Cells are matched by their sites; only cells present in both are compared. Each result's
    ``delta`` (patched minus unpatched metric) is correlated.

    Raises:
        InputError: the results used different directions or metrics.
        ValueError: they share no cells.
    """
    estimates, references = _results(estimate), _results(reference)
    _check_comparable([*estimates, *references])
    left, right = _cells(estimates), _cells(references)
    common = [sites for sites in left if sites in right]
    by_kind: dict[str, list[tuple[Site, ...]]] = {}
    for sites in common:
        kinds = {s.kind for s in sites}
        by_kind.setdefault(kinds.pop() if len(kinds) == 1 else "mixed", []).append(sites)
    if not by_kind:
        raise ValueError("The two results share no cells: run both over the same sites.")
    rows = tuple(
        (kind, len(cells), pearson([left[c] for c in cells], [right[c] for c in cells]))
        for kind, cells in by_kind.items()
    )
    return Agreement(rows)
