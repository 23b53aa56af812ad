"""``PatchResult``: the outcome of a patching sweep, indexed like the sweep and able to show itself.

Activation patching, path patching and attribution patching all return one. ``values`` holds the
metric of each patched variant (averaged over prompts) on the sweep's grid (e.g. ``layer × head``);
``clean`` and ``corrupted`` hold the unpatched baselines per prompt. The normalized effect
``(patched - corrupted) / (clean - corrupted)`` is 1 where the patched run scores like the clean run
and 0 where it scores like the corrupted one — for either direction. ``effect`` says how much of the
behaviour a site carries: the normalized effect when denoising, ``1 - normalized`` when noising.
Where no normalized effect exists (an ablation, or clean and corrupted scoring the same), ``effect``
falls back to the raw change of the metric and ``summary()`` says so.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.detectors.result import Interval, mean_interval
from mechlab.errors import InputError
from mechlab.interventions.sweep import Plan
from mechlab.metrics import normalized_effect
from mechlab.render import figures, html
from mechlab.sites import Site, lookup_key


class Entry(NamedTuple):
    """One cell of a result: its sites, patched metric, and effect."""

    sites: tuple[Site, ...]
    label: str
    value: float
    effect: float


MSG_NAN_SCORES = (
    "The metric {metric} returned NaN for {count} of the runs it scored: {cells}. A NaN score has no "
    "meaning in a patching result, so none was returned. Check the metric on these runs' logits (a "
    "log of 0, 0/0, or an answer token the logits do not contain are the usual causes)."
)


def check_finite(plan: Plan, values: Tensor, baselines: dict[str, Tensor | None], metric: str) -> None:
    """Raise ``InputError`` naming every run (a baseline, or a variant's sites and prompt) scored NaN."""
    cells = [f"the {name} baseline" for name, b in baselines.items() if b is not None and b.isnan().any()]
    for variant, prompt in values.isnan().nonzero().tolist():
        sites = " + ".join(str(site) for site in plan.variants[variant])
        cells.append(f"{sites} (prompt {prompt})")
    if cells:
        shown = ", ".join(cells[:8]) + (f" and {len(cells) - 8} more" if len(cells) > 8 else "")
        raise InputError(MSG_NAN_SCORES.format(metric=metric, count=len(cells), cells=shown))


@dataclasses.dataclass(frozen=True, eq=False)
class PatchResult:
    """Patched metric values on a grid, with baselines.

    Attributes:
        values: patched metric, mean over prompts, shape ``shape`` (axes ``axes``).
        per_prompt: the same per prompt, ``[*shape, batch]``.
        clean: the clean run's metric per prompt ``[batch]``.
        corrupted: the corrupted run's metric per prompt, or ``None`` for an ablation.
        axes: axis names, e.g. ``("layer", "head")``; ``("site",)`` for a list of sites.
        labels: tick labels per axis.
        sites: the sites of each cell, in row-major order of the grid.
        direction: ``"denoise"`` (corrupted run, clean activations patched in) or ``"noise"``.
        method: ``"activation"``, ``"path"`` or ``"attribution"`` (a linear estimate).
        metric: a description of the metric.
        seconds: wall time of the computation.
        context: what else defines the result (e.g. the receivers of path patching).
        mode: how the patched runs were computed: ``"prefix"`` (shared prefix computed once and
            runs resumed at their first patched block), ``"resume"``, ``"full"`` (every run from
            the tokens), or ``""`` (no patched runs: attribution patching).
        n_layers, n_pos: the model's layers and the prompts' positions, so that lookups such as
            ``result["resid_pre.-1@-1"]`` resolve negative indices.
    """

    values: Float[Tensor, "*grid"]
    per_prompt: Float[Tensor, "*grid batch"]
    clean: Float[Tensor, " batch"]
    corrupted: Float[Tensor, " batch"] | None
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    sites: tuple[tuple[Site, ...], ...]
    direction: str
    method: str
    metric: str
    seconds: float
    context: str = ""
    mode: str = ""
    n_layers: int | None = None
    n_pos: int | None = None

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        values: Float[Tensor, "variant batch"],
        clean: Float[Tensor, " batch"],
        corrupted: Float[Tensor, " batch"] | None,
        *,
        direction: str,
        method: str,
        metric: str,
        seconds: float,
        context: str = "",
        mode: str = "",
    ) -> "PatchResult":
        """A result on ``plan``'s grid from per-variant, per-prompt ``values`` (moved to the CPU).

        Raises:
            InputError: the metric gave NaN for a baseline or a patched run; names those runs.
        """
        check_finite(plan, values, {"clean": clean, "corrupted": corrupted}, metric)
        per_prompt = values.detach().cpu().reshape(*plan.shape, values.shape[-1])
        return cls(
            values=per_prompt.mean(-1),
            per_prompt=per_prompt,
            clean=clean.detach().cpu(),
            corrupted=None if corrupted is None else corrupted.detach().cpu(),
            axes=plan.axes,
            labels=plan.labels,
            sites=plan.variants,
            direction=direction,
            method=method,
            metric=metric,
            seconds=seconds,
            context=context,
            mode=mode,
            n_layers=plan.n_layers,
            n_pos=plan.n_pos,
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def baseline(self) -> float:
        """Mean metric of the unpatched run that was patched (corrupted when denoising)."""
        run = self.corrupted if self.direction == "denoise" else self.clean
        assert run is not None
        return float(run.mean())

    @property
    def clean_mean(self) -> float:
        return float(self.clean.mean())

    @property
    def corrupted_mean(self) -> float | None:
        return None if self.corrupted is None else float(self.corrupted.mean())

    @property
    def normalizable(self) -> bool:
        """Whether ``normalized`` exists: a corrupted run that scores differently from the clean run."""
        if self.corrupted is None:
            return False
        gap = torch.as_tensor(self.clean_mean, dtype=self.values.dtype) - float(self.corrupted.mean())
        return bool(gap.abs() >= 1e-12)

    @property
    def normalized(self) -> Tensor:
        """``(patched - corrupted) / (clean - corrupted)`` of the prompt means."""
        if self.corrupted is None:
            raise InputError(
                "This result comes from an ablation, which has no corrupted run to normalize by; "
                "use .values or .delta (patched - clean) instead."
            )
        return normalized_effect(self.values, self.clean_mean, float(self.corrupted.mean()))

    @property
    def delta(self) -> Tensor:
        """``patched - baseline``: how much patching moved the metric of the patched run."""
        return self.values - self.baseline

    def delta_interval(self) -> Interval:
        """Per cell, the mean over prompts of ``patched - unpatched`` (each prompt against its own
        unpatched run) with a two-sided 95% Student-t interval: how sure a dataset-level effect is.
        ``mean`` equals ``delta``; with one prompt, ``low == high == mean``."""
        run = self.corrupted if self.direction == "denoise" else self.clean
        assert run is not None
        per_prompt = (self.per_prompt - run.to(self.per_prompt)).movedim(-1, 0)
        return mean_interval(per_prompt)

    @property
    def effect(self) -> Tensor:
        """How much of the behaviour each cell carries: the normalized effect (``1 - normalized``
        when noising), or, without one, the raw change ``delta`` (``-delta`` when noising)."""
        denoise = self.direction == "denoise"
        if not self.normalizable:
            return self.delta if denoise else -self.delta
        return self.normalized if denoise else 1 - self.normalized

    def label(self, flat_index: int) -> str:
        return " + ".join(str(s) for s in self.sites[flat_index])

    def top(self, k: int = 10) -> list[Entry]:
        """The ``k`` cells with the largest ``|effect|``, largest first."""
        effect = self.effect.flatten()
        order = torch.argsort(effect.abs(), descending=True)[:k]
        values = self.values.flatten()
        return [
            Entry(self.sites[i], self.label(i), float(values[i]), float(effect[i])) for i in order.tolist()
        ]

    def entry(self, site: Site | str) -> Entry:
        """The cell whose (single) site is ``site`` (negative layer/position count from the end)."""
        wanted = lookup_key(site, self.n_layers, self.n_pos)
        for i, sites in enumerate(self.sites):
            if sites == (wanted,):
                value, effect = self.values.flatten()[i], self.effect.flatten()[i]
                return Entry(sites, self.label(i), float(value), float(effect))
        raise KeyError(f"{wanted} is not a cell of this result (axes {self.axes}).")

    def __getitem__(self, site: Site | str) -> float:
        """The patched metric of the cell whose (single) site is ``site``."""
        return self.entry(site).value

    def _grid2d(self, values: Tensor) -> tuple[Tensor, Sequence[str], Sequence[str], str, str]:
        if values.ndim == 1:
            return values.unsqueeze(0), self.labels[0], [""], self.axes[0], ""
        if values.ndim == 2:
            return values, self.labels[1], self.labels[0], self.axes[1], self.axes[0]
        rows = [f"{a}.{b}" for a in self.labels[0] for b in self.labels[1]]
        flat = values.reshape(-1, values.shape[-1])
        return flat, self.labels[2], rows, self.axes[2], f"{self.axes[0]}.{self.axes[1]}"

    def plot(
        self,
        *,
        normalized: bool = True,
        effect: bool = False,
        title: str | None = None,
        label: str | None = None,
    ) -> Figure:
        """A heatmap over the grid of the normalized patched metric (where defined), of the raw
        patched metric (``normalized=False``), or of ``effect`` (``effect=True``). ``label`` names
        the plotted quantity on the colour bar (default: derived from the metric's description)."""
        use_norm = normalized and self.normalizable and not effect
        if effect:
            data, what = self.effect, ("effect" if self.normalizable else f"effect on {self.metric}")
        elif use_norm:
            data, what = self.normalized, "normalized effect"
        else:
            data, what = self.values, self.metric
        grid, xt, yt, xlabel, ylabel = self._grid2d(data)
        return figures.heatmap(
            grid,
            title=title or f"{self.method} patching ({self.direction}): {what}",
            xlabel=xlabel,
            ylabel=ylabel,
            xticklabels=xt,
            yticklabels=yt,
            colorbar_label=what if label is None else label,
            annotate=grid.numel() <= 120,
        )

    def summary(self) -> str:
        corrupted = "-" if self.corrupted_mean is None else f"{self.corrupted_mean:.4f}"
        context = f" [{self.context}]" if self.context else ""
        mode = f", {self.mode} runs" if self.mode else ""
        note = ""
        if self.corrupted is not None and not self.normalizable:
            note = "; clean and corrupted score the same, so effects are raw changes of the metric"
        return (
            f"{self.method} patching ({self.direction}){context} over {'×'.join(self.axes)} "
            f"{self.shape}: {self.metric}; clean {self.clean_mean:.4f}, corrupted {corrupted}; "
            f"{self.seconds:.1f} s{mode}{note}"
        )

    def _repr_html_(self) -> str:
        rows = [(e.label, f"{e.value:.4f}", f"{e.effect:.3f}") for e in self.top(10)]
        return (
            f"<div class='mechlab-patch'><p>{html.escape(self.summary())}</p>"
            + html.image(figures.png_data_uri(self.plot()), "patching heatmap")
            + html.table(["site", "patched metric", "effect"], rows, caption="top 10 by |effect|")
            + "</div>"
        )

    def __repr__(self) -> str:
        return f"PatchResult({self.summary()})"

    def records(self) -> list[dict[str, Any]]:
        """One dict per cell: grid coordinates, sites, value, normalized effect (if defined), effect."""
        norm = self.normalized.flatten().tolist() if self.normalizable else None
        effect = self.effect.flatten().tolist()
        out = []
        for i, value in enumerate(self.values.flatten().tolist()):
            coords = torch.unravel_index(torch.tensor(i), self.shape)
            row: dict[str, Any] = {a: self.labels[k][int(coords[k])] for k, a in enumerate(self.axes)}
            row.update(site=self.label(i), value=value, effect=effect[i])
            if norm is not None:
                row["normalized"] = norm[i]
            out.append(row)
        return out

    def to_dataframe(self) -> Any:
        """A pandas DataFrame of ``records()`` (pandas comes with transformer-lens)."""
        import pandas as pd

        return pd.DataFrame(self.records())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: baselines, axes, and every cell."""
        return {
            "method": self.method,
            "direction": self.direction,
            "mode": self.mode,
            "metric": self.metric,
            "context": self.context,
            "clean": self.clean_mean,
            "corrupted": self.corrupted_mean,
            "axes": list(self.axes),
            "shape": list(self.shape),
            "seconds": self.seconds,
            "cells": self.records(),
        }
