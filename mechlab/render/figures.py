"""Static figures (matplotlib, Agg backend): heatmaps, line plots and grouped bars for every result.

Figures are created with ``matplotlib.figure.Figure`` directly (not ``pyplot``), so nothing global
changes and no window ever opens.
"""

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure


def _array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def heatmap(
    values: torch.Tensor | np.ndarray,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
    colorbar_label: str = "",
    diverging: bool = True,
    annotate: bool = False,
) -> Figure:
    """A 2-D heatmap; diverging maps are centred on 0 with a symmetric range."""
    data = _array(values)
    height, width = data.shape
    fig = Figure(figsize=(min(2 + 0.45 * width, 16), min(1.5 + 0.3 * height, 14)), layout="constrained")
    ax = fig.add_subplot()
    if diverging:
        bound = float(np.nanmax(np.abs(data))) or 1.0
        image = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        image = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticklabels is not None:
        ax.set_xticks(range(width), list(xticklabels), rotation=90, fontsize=7)
    if yticklabels is not None:
        ax.set_yticks(range(height), list(yticklabels), fontsize=7)
    if annotate:
        for (row, col), value in np.ndenumerate(data):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return fig


def lines(
    series: Mapping[str, torch.Tensor | np.ndarray | Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    x: Sequence[float] | None = None,
    xticklabels: Sequence[str] | None = None,
) -> Figure:
    """One line per named series over a shared x axis."""
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name, ys in series.items():
        ys_array = _array(np.asarray(ys) if not isinstance(ys, torch.Tensor) else ys)
        xs = np.arange(len(ys_array)) if x is None else np.asarray(x)
        ax.plot(xs, ys_array, marker="o", markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), list(xticklabels), rotation=90, fontsize=7)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def bars(
    series: Mapping[str, Mapping[str, float]],
    *,
    title: str,
    ylabel: str,
    xlabel: str = "",
    rotation: int = 0,
) -> Figure:
    """Grouped bars: one group per label (e.g. a head), one bar per named series in each group.

    ``series`` maps a series name to ``{label: value}``; every series gives the same labels (the
    first series' order is used).
    """
    labels = list(next(iter(series.values()), {}))
    fig = Figure(figsize=(max(5.0, min(0.6 * len(labels) + 2, 16)), 3.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [x - 0.4 + (i + 0.5) * width for x in range(len(labels))]
        ax.bar(xs, [values[label] for label in labels], width=width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=rotation)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (deterministic: no timestamp metadata)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def png_data_uri(fig: Figure, dpi: int = 110) -> str:
    """The figure as a ``data:image/png;base64,...`` URI for offline HTML."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig, dpi)).decode("ascii")
