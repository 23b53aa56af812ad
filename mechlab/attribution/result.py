"""``Attribution``: per-token (or per-component) scores for one target, as every attribution
method returns them, with their completeness check and their own rendering.

Integrated Gradients satisfies *completeness*: the attributions sum to ``F(x) - F(baseline)``. The
numerical integral only approximates that, so every result carries ``completeness_error``
``= |sum(scores) - (F(x) - F(baseline))| / |F(x) - F(baseline)|``; a large value means too few
integration steps. Gradient × input is reported with the same check (it is one-step IG and usually
fails it); occlusion has no such identity (``completeness_error`` is ``None``).
"""

import dataclasses
import math

import torch
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.errors import InputError
from mechlab.render.figures import heatmap
from mechlab.render.page import Page
from mechlab.render.tokens import colored_tokens, plot_text
from mechlab.sites import Site
from mechlab.types import Tokens

METHOD_NAMES = {
    "integrated_gradients": "Integrated Gradients",
    "gradient_x_input": "Gradient × input",
    "occlusion": "Occlusion",
    "layer_integrated_gradients": "Layer Integrated Gradients",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Attribution:
    """Attribution scores of one prompt's tokens (or of a site's activation) to a target.

    Attributes:
        method: ``integrated_gradients``, ``gradient_x_input``, ``occlusion`` or
            ``layer_integrated_gradients``.
        tokens: the prompt, ``[1, pos]``.
        str_tokens: each token's text.
        scores: ``[pos]`` for input attributions; for layer IG the site's activation shape without
            batch and summed over its last axis (``resid_*``: ``[pos]``, ``z``: ``[pos, head]``).
        target: the target's label, e.g. ``logprob(' Paris')``.
        value: the target on the prompt, ``F(x)``.
        baseline_value: ``F(baseline)``; ``None`` for occlusion.
        baseline: how the baseline was chosen (``pad``, ``zeros``, ``token 0``, ``tensor``).
        steps: integration steps (``None`` for one-shot methods).
        site: the attributed site (``embed`` for input attributions).
        detail: method-specific notes (quadrature rule, occlusion mode).
    """

    method: str
    tokens: Tokens
    str_tokens: tuple[str, ...]
    scores: Tensor
    target: str
    value: float
    baseline_value: float | None
    baseline: str
    steps: int | None = None
    site: Site = dataclasses.field(default_factory=lambda: Site("embed"))
    detail: str = ""

    @property
    def completeness_delta(self) -> float | None:
        """``sum(scores) - (F(x) - F(baseline))``, or ``None`` when undefined."""
        if self.baseline_value is None:
            return None
        return float(self.scores.double().sum()) - (self.value - self.baseline_value)

    @property
    def completeness_error(self) -> float | None:
        """``|delta| / |F(x) - F(baseline)|`` (``inf`` if the gap is 0), or ``None`` for occlusion."""
        delta = self.completeness_delta
        if delta is None or self.baseline_value is None:
            return None
        gap = abs(self.value - self.baseline_value)
        return abs(delta) / gap if gap > 0 else math.inf

    def top(self, k: int = 5, *, by: str = "value") -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring positions as ``(pos, token, score)``; ``by="abs"`` ranks |score|."""
        if self.scores.ndim != 1:
            raise InputError(f"top() needs per-token scores; these have shape {tuple(self.scores.shape)}.")
        key = self.scores.abs() if by == "abs" else self.scores
        order = torch.argsort(key, descending=True)[:k].tolist()
        return [(i, self.str_tokens[i], float(self.scores[i])) for i in order]

    def words(self) -> list[tuple[str, float]]:
        """Per-token scores summed over words (a token that starts with a letter or digit and
        follows one joins the previous word: ``' E' + 'iffel'`` → ``' Eiffel'``)."""
        if self.scores.ndim != 1:
            raise InputError(f"words() needs per-token scores; these have shape {tuple(self.scores.shape)}.")
        merged: list[tuple[str, float]] = []
        for token, score in zip(self.str_tokens, self.scores.tolist(), strict=True):
            joins = merged and token[:1].isalnum() and merged[-1][0][-1:].isalnum()
            if joins:
                merged[-1] = (merged[-1][0] + token, merged[-1][1] + score)
            else:
                merged.append((token, score))
        return merged

    def summary(self) -> str:
        """One line: method, target, F(x), F(baseline), completeness."""
        text = f"{METHOD_NAMES.get(self.method, self.method)} of {self.target}: F(x) = {self.value:.4f}"
        if self.baseline_value is not None:
            text += f", F(baseline) = {self.baseline_value:.4f} ({self.baseline} baseline)"
        if self.completeness_error is not None:
            text += f", completeness error {100 * self.completeness_error:.2f}%"
        if self.steps is not None:
            text += f" at {self.steps} steps"
        return text

    def plot(self) -> Figure:
        """A bar chart of per-token scores (a heatmap for per-head layer attributions)."""
        labels = [f"{i}:{plot_text(t)}" for i, t in enumerate(self.str_tokens)]
        if self.scores.ndim == 2 and self.scores.shape[0] == len(labels):
            return heatmap(
                self.scores.T,
                title=plot_text(
                    f"{METHOD_NAMES.get(self.method, self.method)} at {self.site}: {self.target}"
                ),
                xlabel="position",
                ylabel="head",
                xticklabels=labels,
                colorbar_label="attribution",
            )
        if self.scores.ndim != 1:
            raise InputError(f"plot() draws [pos] or [pos, head] scores, not {tuple(self.scores.shape)}.")
        fig = Figure(figsize=(min(2 + 0.45 * len(labels), 16), 3.6), layout="constrained")
        ax = fig.add_subplot()
        values = self.scores.detach().float().cpu().numpy()
        ax.bar(range(len(values)), values, color=["#d62728" if v >= 0 else "#1f77b4" for v in values])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_ylabel("attribution")
        ax.set_title(plot_text(f"{METHOD_NAMES.get(self.method, self.method)}: {self.target}"), fontsize=10)
        return fig

    def add_to(self, page: Page, *, title: str | None = None) -> Page:
        """Append this attribution as a section of ``page``."""
        name = METHOD_NAMES.get(self.method, self.method)
        section = page.section(title or f"{name}: {self.target}")
        section.text(self.summary())
        if self.scores.ndim == 1:
            section.html(colored_tokens(self.str_tokens, self.scores.tolist()))
            rows = [
                (p, repr(t), f"{s:+.4f}") for p, t, s in self.top(min(10, len(self.str_tokens)), by="abs")
            ]
            section.table(["pos", "token", "attribution"], rows, caption="Largest attributions by magnitude")
        section.figure(self.plot(), alt=f"{name} per token")
        if self.detail:
            section.text(self.detail, note=True)
        return page

    def page(self, title: str | None = None) -> Page:
        """A page holding this attribution alone."""
        return self.add_to(Page(title or METHOD_NAMES.get(self.method, self.method)))

    def save_html(self, path: str) -> object:
        """Write a self-contained HTML page; returns the path."""
        return self.page().save(path)

    def _repr_html_(self) -> str:
        return self.page().body()
