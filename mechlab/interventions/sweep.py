"""What to patch: one site, a list of sites (or groups of sites patched together), or a sweep.

A ``Sweep`` names every site of one kind — per layer, per head for per-head kinds, and optionally per
position — and lays the results out on a grid with named axes (``layer``, ``head``, ``pos``).
``resolve`` turns any of these forms into a ``Plan``: the variants to run (each a tuple of Sites
patched together), the grid shape, the axis names and tick labels.
"""

import dataclasses
from collections.abc import Sequence
from typing import TypeAlias

from mechlab.errors import SiteError
from mechlab.sites import HEAD_KINDS, KINDS, Site, n_heads_for, validate
from mechlab.types import HookedModel

# Kinds whose replacement reaches the model's output on TransformerLens 4 bridges. Layer-norm scales
# are rebuilt from hooked values with a warning, and attention scores are read after the wrapped
# module has used them in some bridges, so patching them is refused rather than silently ignored.
PATCHABLE_KINDS: tuple[str, ...] = (
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "mlp_pre",
    "mlp_post",
    "z",
    "q",
    "k",
    "v",
    "pattern",
    "embed",
)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Every site of ``kind``, one variant each, on a ``layer [× head] [× pos]`` grid.

    Args:
        kind: a patchable site kind (``PATCHABLE_KINDS``).
        layers: the layers to sweep (default all).
        heads: the heads to sweep for per-head kinds (default all; key/value heads for ``k``/``v``).
        per_position: one variant per position (query position for ``pattern``) instead of all
            positions at once.
        positions: the positions to sweep when ``per_position`` (default all).
    """

    kind: str
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    per_position: bool = False
    positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in PATCHABLE_KINDS:
            raise SiteError(f"Cannot sweep {self.kind!r}; sweepable kinds: {', '.join(PATCHABLE_KINDS)}.")
        if self.kind == "embed" and (self.layers or self.heads):
            raise ValueError("'embed' has no layers or heads; use Sweep('embed', per_position=True).")
        if self.heads is not None and self.kind not in HEAD_KINDS:
            raise ValueError(f"{self.kind!r} has no heads; drop heads={self.heads}.")
        if self.positions is not None and not self.per_position:
            raise ValueError("positions= only applies with per_position=True.")


VariantSpec: TypeAlias = Site | Sequence[Site]
SitesLike: TypeAlias = Sweep | str | Site | Sequence[VariantSpec]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Resolved variants (each a tuple of validated Sites) laid out on ``shape`` with named axes."""

    variants: tuple[tuple[Site, ...], ...]
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]


def _from_string(text: str) -> Sweep | list[VariantSpec]:
    if text in KINDS:
        return Sweep(text)
    return [Site.parse(text)]


def _resolve_sweep(model: HookedModel, sweep: Sweep, pos_labels: Sequence[str]) -> Plan:
    n_layers, n_pos = model.cfg.n_layers, len(pos_labels)
    axes: list[str] = []
    ranges: list[list[int | None]] = []
    labels: list[tuple[str, ...]] = []
    if sweep.kind != "embed":
        layers = [
            validate(Site(sweep.kind, layer), model).layer for layer in (sweep.layers or range(n_layers))
        ]
        axes.append("layer")
        ranges.append(list(layers))
        labels.append(tuple(str(layer) for layer in layers))
    if sweep.kind in HEAD_KINDS:
        heads = (
            list(sweep.heads) if sweep.heads is not None else list(range(n_heads_for(model.cfg, sweep.kind)))
        )
        axes.append("head")
        ranges.append(list(heads))
        labels.append(tuple(str(h) for h in heads))
    if sweep.per_position:
        positions = [p % n_pos for p in (sweep.positions or range(n_pos))]
        if any(not 0 <= p < n_pos for p in positions):
            raise SiteError(f"Positions {sweep.positions} do not fit prompts of {n_pos} tokens.")
        axes.append("pos")
        ranges.append(list(positions))
        labels.append(tuple(f"{p}:{pos_labels[p]}" for p in positions))
    if not axes:
        return Plan(((Site("embed"),),), (1,), ("site",), (("embed",),))
    variants = []
    for cell in _product(ranges):
        fields = dict(zip(axes, cell, strict=True))
        site = Site(sweep.kind, fields.get("layer"), fields.get("head"), fields.get("pos"))
        variants.append((validate(site, model),))
    return Plan(tuple(variants), tuple(len(r) for r in ranges), tuple(axes), tuple(labels))


def _product(ranges: list[list[int | None]]) -> list[tuple[int | None, ...]]:
    cells: list[tuple[int | None, ...]] = [()]
    for values in ranges:
        cells = [(*cell, value) for cell in cells for value in values]
    return cells


def _check_patchable(site: Site) -> None:
    if site.kind not in PATCHABLE_KINDS:
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
            if site.pos is not None and not -n_pos <= site.pos < n_pos:
                raise SiteError(f"Site {site} names position {site.pos}, but the prompts have {n_pos}.")
            site = site if site.pos is None else site.with_(pos=site.pos % n_pos)
            checked.append(validate(site, model))
        variants.append(tuple(checked))
    names = tuple(" + ".join(str(s) for s in group) for group in variants)
    return Plan(tuple(variants), (len(variants),), ("site",), (names,))


def start_layer(variant: Sequence[Site]) -> int | None:
    """The first block a variant changes (``None``: before block 0, so the run starts from tokens)."""
    layers = [site.layer for site in variant]
    if any(layer is None for layer in layers):
        return None
    return min(layer for layer in layers if layer is not None)
