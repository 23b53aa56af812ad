"""What to patch: one site, a list of sites (or groups of sites patched together), or a sweep.

A ``Sweep`` names every site of one kind — per layer, per head for per-head kinds, and optionally per
position — and lays the results out on a grid with named axes (``layer``, ``head``, ``pos``).
``resolve`` turns any of these forms into a ``Plan``: the variants to run (each a tuple of Sites
patched together), the grid shape, the axis names and tick labels. ``run_chunks`` then evaluates the
variants a forward-sized batch at a time, ordered by the first layer they change.
"""

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeAlias

import torch
from torch import Tensor

from mechlab.errors import InputError, SiteError
from mechlab.executors import Executor, resolve_executor
from mechlab.progress import Progress, SweepProgress
from mechlab.sites import (
    PATCHABLE_KINDS,
    Site,
    all_kinds,
    fit_pos,
    fit_site,
    has_units,
    is_layer_kind,
    layer_sites,
    n_units,
    patchable,
    validate,
)
from mechlab.types import HookedModel


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Every site of ``kind``, one variant each, on a ``layer [× head] [× pos]`` grid.

    Args:
        kind: a patchable site kind (``PATCHABLE_KINDS``), or an extension kind viewing one.
        layers: the layers to sweep (default ``None``: all; any sequence, e.g. ``range(20)``).
        heads: the heads to sweep for per-head kinds (default all; key/value heads for ``k``/``v``).
        per_position: one variant per position (query position for ``pattern``) instead of all
            positions at once.
        positions: the positions to sweep when ``per_position`` (default all).

    An empty selection (``layers=()``) is an error rather than "all".
    """

    kind: str
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    per_position: bool = False
    positions: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not patchable(self.kind):
            raise SiteError(
                f"Cannot sweep {self.kind!r}; sweepable kinds: {', '.join(PATCHABLE_KINDS)}, and "
                "registered kinds that view one of them."
            )
        for name in ("layers", "heads", "positions"):
            chosen = getattr(self, name)
            if chosen is not None:
                if len(chosen) == 0:
                    raise InputError(
                        f"Sweep({self.kind!r}, {name}=()) selects nothing: pass at least one, or "
                        f"leave {name}=None to sweep all."
                    )
                object.__setattr__(self, name, tuple(int(x) for x in chosen))
        if self.kind == "embed" and (self.layers is not None or self.heads is not None):
            raise InputError("'embed' has no layers or heads; use Sweep('embed', per_position=True).")
        if self.heads is not None and not has_units(self.kind):
            raise InputError(f"{self.kind!r} has no heads; drop heads={self.heads}.")
        if self.positions is not None and not self.per_position:
            raise InputError("positions= only applies with per_position=True.")


VariantSpec: TypeAlias = Site | Sequence[Site]
SitesLike: TypeAlias = Sweep | str | Site | Sequence[VariantSpec]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Resolved variants (each a tuple of validated Sites) laid out on ``shape`` with named axes,
    for a model of ``n_layers`` layers and prompts of ``n_pos`` tokens."""

    variants: tuple[tuple[Site, ...], ...]
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    n_layers: int
    n_pos: int


def _from_string(text: str) -> Sweep | list[VariantSpec]:
    if text in all_kinds():
        return Sweep(text)
    return [Site.parse(text)]


def _resolve_sweep(model: HookedModel, sweep: Sweep, pos_labels: Sequence[str]) -> Plan:
    n_layers, n_pos = int(model.cfg.n_layers), len(pos_labels)
    axes: list[str] = []
    ranges: list[list[int | None]] = []
    labels: list[tuple[str, ...]] = []
    if is_layer_kind(sweep.kind):
        if sweep.layers is None:
            layers = [site.layer for site in layer_sites(model, sweep.kind)]
        else:
            layers = [validate(Site(sweep.kind, layer), model).layer for layer in sweep.layers]
        axes.append("layer")
        ranges.append(list(layers))
        labels.append(tuple(str(layer) for layer in layers))
    if has_units(sweep.kind):
        heads = list(sweep.heads) if sweep.heads is not None else list(range(n_units(model, sweep.kind)))
        axes.append("head")
        ranges.append(list(heads))
        labels.append(tuple(str(h) for h in heads))
    if sweep.per_position:
        chosen = range(n_pos) if sweep.positions is None else sweep.positions
        positions = [fit_pos(p, n_pos, f"Sweep({sweep.kind!r}, positions=...)") for p in chosen]
        axes.append("pos")
        ranges.append(list(positions))
        labels.append(tuple(f"{p}:{pos_labels[p]}" for p in positions))
    if not axes:
        return Plan(((Site("embed"),),), (1,), ("site",), (("embed",),), n_layers, n_pos)
    variants = []
    for cell in _product(ranges):
        fields = dict(zip(axes, cell, strict=True))
        site = Site(sweep.kind, fields.get("layer"), fields.get("head"), fields.get("pos"))
        variants.append((validate(site, model),))
    shape = tuple(len(r) for r in ranges)
    return Plan(tuple(variants), shape, tuple(axes), tuple(labels), n_layers, n_pos)


def _product(ranges: list[list[int | None]]) -> list[tuple[int | None, ...]]:
    cells: list[tuple[int | None, ...]] = [()]
    for values in ranges:
        cells = [(*cell, value) for cell in cells for value in values]
    return cells


def _check_patchable(site: Site) -> None:
    if not patchable(site.kind):
        raise SiteError(
            f"Cannot patch {site}: {site.kind!r} activations are not fed back into the model by "
            f"every bridge. Patchable kinds: {', '.join(PATCHABLE_KINDS)}."
        )


def resolve(model: HookedModel, sites: SitesLike, pos_labels: Sequence[str]) -> Plan:
    """Turn a sweep, a kind name, a site string, a Site, or a list of sites/groups into a Plan.

    Args:
        model: the model the sites must exist in (layers/heads are validated against it).
        sites: ``Sweep(...)``; a kind such as ``"z"`` (a sweep of every head); a site string such as
            ``"z.9.6"``; a ``Site``; or a list whose items are Sites or groups (lists) of Sites that
            are patched together as one variant.
        pos_labels: one label per position of the prompts (used for position axes).
    """
    if isinstance(sites, str):
        sites = _from_string(sites)
    if isinstance(sites, Sweep):
        return _resolve_sweep(model, sites, pos_labels)
    items: Sequence[VariantSpec] = [sites] if isinstance(sites, Site) else sites
    if len(items) == 0:
        raise SiteError("No sites to patch: pass a Sweep, a kind such as 'z', or a list of Sites.")
    n_pos = len(pos_labels)
    variants = []
    for item in items:
        group = (item,) if isinstance(item, Site) else tuple(item)
        checked = []
        for site in group:
            if not isinstance(site, Site):
                raise SiteError(f"Expected Site objects (or lists of them), got {type(site).__name__}.")
            _check_patchable(site)
            checked.append(validate(fit_site(site, n_pos), model))
        variants.append(tuple(checked))
    names = tuple(" + ".join(str(s) for s in group) for group in variants)
    return Plan(tuple(variants), (len(variants),), ("site",), (names,), int(model.cfg.n_layers), n_pos)


def start_layer(variant: Sequence[Site]) -> int | None:
    """The first block a variant changes (``None``: before block 0, so the run starts from tokens)."""
    layers = [site.layer for site in variant]
    if any(layer is None for layer in layers):
        return None
    return min(layer for layer in layers if layer is not None)


Evaluate: TypeAlias = Callable[[list[int], int | None], Tensor]


def chunks(starts: Sequence[int | None], rows_per_variant: int, batch_size: int) -> list[list[int]]:
    """Variant indices in forward-sized groups (≤ ``batch_size`` rows), ordered by start layer."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1 (rows per forward pass), got {batch_size}.")
    per_chunk = max(1, batch_size // rows_per_variant)
    order = sorted(range(len(starts)), key=lambda i: -1 if (s := starts[i]) is None else s)
    return [order[i : i + per_chunk] for i in range(0, len(order), per_chunk)]


def chunk_start(starts: Sequence[int | None], chunk: Sequence[int]) -> int | None:
    """The first block any variant of ``chunk`` changes (``None``: before block 0)."""
    values = [starts[i] for i in chunk]
    if any(s is None for s in values):
        return None
    return min(s for s in values if s is not None)


def run_chunks(
    values: Tensor,
    todo: Sequence[int],
    starts: Sequence[int | None],
    batch_size: int,
    evaluate: Evaluate,
    progress: Progress | None,
    executor: Executor | str | None = None,
) -> None:
    """Fill ``values[i]`` (``[batch]`` per variant) for the variants ``todo``, a batch of variants
    at a time: ``evaluate(indices, start_layer) -> [len(indices), batch]`` (on any device).

    Each batch is one task of ``executor`` (default: in this process, in order).
    """
    parts = [
        [todo[i] for i in part]
        for part in chunks([starts[i] for i in todo], int(values.shape[1]), batch_size)
    ]
    done = len(values) - len(todo)
    work = partial(evaluate_chunk, evaluate, list(starts))

    def arrived(index: int, result: Tensor) -> None:
        nonlocal done
        values[parts[index]] = result.to(values)
        done += len(parts[index])
        if progress is not None:
            progress(SweepProgress(done, len(values)))

    resolve_executor(executor).map(work, parts, on_result=arrived)


def evaluate_chunk(evaluate: Evaluate, starts: Sequence[int | None], chunk: list[int]) -> Tensor:
    """The work of a ``run_chunks`` task: ``chunk``'s scores ``[len(chunk), batch]``, on the CPU.
    A module-level function (with ``partial``), so the task's work pickles when ``evaluate`` does."""
    return evaluate(chunk, chunk_start(starts, chunk)).to("cpu")


def variant_values(plan: Plan, batch: int) -> Tensor:
    """An empty ``[variant, batch]`` table for a plan's scores (on the CPU, where results live)."""
    return torch.empty(len(plan.variants), batch, device="cpu")


def whole_sites(plan: Plan) -> list[Site]:
    """The distinct whole hooked tensors a plan's variants slice."""
    return list(dict.fromkeys(site.whole for variant in plan.variants for site in variant))
