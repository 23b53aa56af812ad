"""Sites: typed names for the places in a transformer where activations can be read or replaced.

A ``Site`` is a frozen value ``Site(kind, layer, head=None, pos=None)``; ``site.hook_name`` turns it
into the HookedTransformer hook name (``Site("z", 3, 5).hook_name == "blocks.3.attn.hook_z"``).
This module is the only place in mechlab where hook-name strings are built.

``head`` and ``pos`` do not change the hook name: they say which slice of the hooked tensor the
site means. Per-head kinds carry a head axis; ``k`` and ``v`` count key/value heads, which are fewer
than query heads in grouped-query attention models (SmolLM2: 9 query heads, 3 key/value heads).

String form, for the command line: ``kind[.layer[.head]][@pos]``, e.g. ``"z.3.5"``,
``"resid_pre.4@7"``, ``"embed"``.

Kinds beyond hook points (a sparse dictionary's latents) are views of one, registered in
``mechlab.site_kinds``: ``Site(name, layer, unit)`` is their site, ``hook_name`` the host's hook
name plus ``.hook_{name}``, and ``host`` the hook point they are read from and written to.
"""

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from mechlab.errors import SiteError
from mechlab.site_kinds import (
    GLOBAL_KINDS,
    HEAD_KINDS,
    KINDS,
    KV_KINDS,
    LAYER_KINDS,
    PATCHABLE_KINDS,
    PATTERN_KINDS,
    RESID_KINDS,
    SiteKind,
    site_kind,
    site_kind_names,
)

__all__ = [
    "GLOBAL_KINDS",
    "HEAD_KINDS",
    "KINDS",
    "KV_KINDS",
    "LAYER_KINDS",
    "PATCHABLE_KINDS",
    "PATTERN_KINDS",
    "RESID_KINDS",
    "Site",
    "SiteKind",
    "all_kinds",
    "fit_pos",
    "fit_site",
    "has_units",
    "head_sites",
    "is_layer_kind",
    "kv_head",
    "layer_sites",
    "lookup_key",
    "n_heads_for",
    "n_units",
    "patchable",
    "stop_layer",
    "validate",
]

_LAYER_TEMPLATES: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "mlp_pre": "blocks.{layer}.mlp.hook_pre",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
    "ln1_scale": "blocks.{layer}.ln1.hook_scale",
    "ln2_scale": "blocks.{layer}.ln2.hook_scale",
    # The MLP's input (after ln2 and its weight); ln*_normalized: the norm's output before its weight.
    "mlp_in": "blocks.{layer}.mlp.hook_in",
    "ln1_normalized": "blocks.{layer}.ln1.hook_normalized",
    "ln2_normalized": "blocks.{layer}.ln2.hook_normalized",
    "z": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
}
_GLOBAL_NAMES: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final": "ln_final.hook_normalized",
    "ln_final_scale": "ln_final.hook_scale",
}
_SITE_RE = re.compile(
    r"^(?P<kind>[a-z_0-9]+)(?:\.(?P<layer>-?\d+))?(?:\.(?P<head>\d+))?(?:@(?P<pos>-?\d+))?$"
)


@dataclasses.dataclass(frozen=True, order=True)
class Site:
    """One hookable place: ``kind`` at ``layer``, optionally one ``head`` and one position ``pos``.

    Args:
        kind: one of ``KINDS``, or a registered extension kind (``mechlab.site_kinds``).
        layer: block index for layer kinds; ``None`` for global kinds (``embed``, ``ln_final``…).
        head: a head index for per-head kinds (``z q k v pattern attn_scores``), a unit index for
            extension kinds (``Site("dict", 5, 123)``: unit 123), else ``None``.
        pos: a position (query position for ``pattern``/``attn_scores``), or ``None`` for all.
    """

    kind: str
    layer: int | None = None
    head: int | None = None
    pos: int | None = None

    def __post_init__(self) -> None:
        if self.kind in KINDS:
            host = self.kind
        else:
            extension = _extension(self.kind)
            host = extension.host
        if host in LAYER_KINDS and self.layer is None:
            raise SiteError(f"Site kind {self.kind!r} needs a layer, e.g. Site({self.kind!r}, 0).")
        if host in GLOBAL_KINDS and self.layer is not None:
            raise SiteError(f"Site kind {self.kind!r} is not per layer; drop layer={self.layer}.")
        if self.head is not None and not has_units(self.kind):
            raise SiteError(
                f"Site kind {self.kind!r} has no head axis (got head={self.head}); per-head kinds "
                f"are {', '.join(HEAD_KINDS)}."
            )

    @property
    def extension(self) -> SiteKind | None:
        """The kind's ``SiteKind`` when it is a view of a hook point, ``None`` for a hook point."""
        return None if self.kind in KINDS else _extension(self.kind)

    @property
    def host(self) -> "Site":
        """The whole hook-point site this site's activation lives in (itself, whole, if built in)."""
        extension = self.extension
        return self.whole if extension is None else Site(extension.host, self.layer)

    @property
    def hook_name(self) -> str:
        """The HookedTransformer hook name of this site (an extension kind: its host's + ``.hook_{kind}``)."""
        if self.kind not in KINDS:
            return f"{self.host.hook_name}.hook_{self.kind}"
        if self.kind in GLOBAL_KINDS:
            return _GLOBAL_NAMES[self.kind]
        return _LAYER_TEMPLATES[self.kind].format(layer=self.layer)

    @property
    def head_axis(self) -> int | None:
        """Axis of the head dimension in the hooked tensor, or None if the kind has none."""
        if self.kind in PATTERN_KINDS:
            return 1
        return 2 if has_units(self.kind) else None

    @property
    def pos_axis(self) -> int:
        """Axis of the (query) position dimension in the hooked tensor."""
        return 2 if self.kind in PATTERN_KINDS else 1

    @property
    def whole(self) -> "Site":
        """The site of the whole hooked tensor this site slices (``head`` and ``pos`` dropped)."""
        return self.with_(head=None, pos=None)

    def with_(self, **changes: Any) -> "Site":
        """A copy with some fields replaced, e.g. ``site.with_(pos=3)``."""
        return dataclasses.replace(self, **changes)

    def index(self, act: Tensor) -> tuple[slice | int, ...]:
        """The index tuple that selects this site's head and position in its hooked tensor."""
        idx: list[slice | int] = [slice(None)] * act.ndim
        if self.head is not None and self.head_axis is not None:
            idx[self.head_axis] = self.head
        if self.pos is not None:
            idx[self.pos_axis] = self.pos
        return tuple(idx)

    def __str__(self) -> str:
        text = self.kind
        if self.layer is not None:
            text += f".{self.layer}"
        if self.head is not None:
            text += f".{self.head}"
        if self.pos is not None:
            text += f"@{self.pos}"
        return text

    @classmethod
    def parse(cls, text: str) -> "Site":
        """Parse ``kind[.layer[.head]][@pos]``, e.g. ``"z.3.5"`` or ``"resid_pre.4@7"``."""
        match = _SITE_RE.match(text.strip())
        if match is None:
            raise SiteError(
                f"Cannot parse site {text!r}: expected kind[.layer[.head]][@pos], e.g. 'z.3.5', "
                f"'resid_pre.4@7' or 'embed'. Valid kinds: {', '.join(all_kinds())}."
            )
        groups = match.groupdict()
        return cls(
            kind=groups["kind"],
            layer=None if groups["layer"] is None else int(groups["layer"]),
            head=None if groups["head"] is None else int(groups["head"]),
            pos=None if groups["pos"] is None else int(groups["pos"]),
        )


def _extension(name: str) -> SiteKind:
    extension = site_kind(name)
    if extension is None:
        extensions = site_kind_names()
        raise SiteError(
            f"Unknown site kind {name!r}. Valid kinds: per layer {', '.join(LAYER_KINDS)}; global "
            f"{', '.join(GLOBAL_KINDS)}"
            + (f"; registered {', '.join(extensions)}." if extensions else ".")
            + " A kind that is not a hook point is registered with mechlab.register_site_kind."
        )
    return extension


def all_kinds() -> list[str]:
    """The built-in kinds and every registered extension kind."""
    return [*KINDS, *site_kind_names()]


def patchable(kind: str) -> bool:
    """Whether replacing ``kind``'s activations reaches the output (an extension kind: its host's)."""
    if kind in KINDS:
        return kind in PATCHABLE_KINDS
    extension = site_kind(kind) if kind.isidentifier() else None
    return extension is not None and extension.host in PATCHABLE_KINDS


def is_layer_kind(text: str) -> bool:
    """Whether ``text`` is the name of a per-layer kind (built-in, or an extension on one)."""
    if text in KINDS:
        return text in LAYER_KINDS
    extension = site_kind(text) if text.isidentifier() else None
    return extension is not None and extension.host in LAYER_KINDS


def has_units(kind: str) -> bool:
    """Whether sites of ``kind`` may name one head (per-head kinds) or unit (extension kinds)."""
    return kind in HEAD_KINDS or kind not in KINDS


def n_heads_for(cfg: Any, kind: str) -> int:
    """How many heads a per-head kind has in a model with config ``cfg`` (k/v: key/value heads)."""
    if kind in KV_KINDS:
        return int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    return int(cfg.n_heads)


def kv_head(cfg: Any, head: int) -> int:
    """The key/value head query head ``head`` reads (grouped-query attention shares each among
    ``n_heads / n_key_value_heads`` query heads; without it, the same index)."""
    return head // (int(cfg.n_heads) // n_heads_for(cfg, "k"))


def fit_pos(pos: int, n_pos: int, what: str, error: type[Exception] = SiteError) -> int:
    """``pos`` as an index ``0..n_pos-1`` (negative positions count from the end).

    Raises:
        SiteError (or ``error``): ``pos`` does not exist in prompts of ``n_pos`` tokens; ``what``
        names what asked for it.
    """
    if not -n_pos <= pos < n_pos:
        raise error(
            f"{what} names position {pos}, but the prompts have {n_pos} tokens (valid: 0..{n_pos - 1}, "
            "or negative from the end)."
        )
    return pos % n_pos


def fit_site(site: Site, n_pos: int) -> Site:
    """``site`` with its position resolved against prompts of ``n_pos`` tokens (SiteError if none)."""
    return site if site.pos is None else site.with_(pos=fit_pos(site.pos, n_pos, f"Site {site}"))


def lookup_key(key: "Site | str", n_layers: int | None, n_pos: int | None) -> Site:
    """The stored form of a lookup key: parsed, with negative layer/position counted from the end.

    Results and captures store sites with non-negative layers and positions; this lets
    ``acts["resid_pre.-1@-1"]`` find ``resid_pre.{n_layers-1}@{n_pos-1}``.
    """
    site = Site.parse(key) if isinstance(key, str) else key
    changes: dict[str, int] = {}
    if site.layer is not None and n_layers and -n_layers <= site.layer < 0:
        changes["layer"] = site.layer + n_layers
    if site.pos is not None and n_pos and -n_pos <= site.pos < 0:
        changes["pos"] = site.pos + n_pos
    return site.with_(**changes) if changes else site


def validate(site: Site, model: Any) -> Site:
    """Check that ``site`` exists in ``model``; return it with a negative layer resolved.

    Raises:
        SiteError: listing the valid layers/heads/kinds when the site does not fit the model.
    """
    cfg = model.cfg
    layer = site.layer
    if layer is not None:
        if not -cfg.n_layers <= layer < cfg.n_layers:
            raise SiteError(
                f"Site {site} names layer {layer}, but the model has {cfg.n_layers} layers "
                f"(valid: 0..{cfg.n_layers - 1}, or negative from the end)."
            )
        layer %= cfg.n_layers
        site = site.with_(layer=layer)
    extension = site.extension
    if extension is not None and layer is not None:
        layers = extension.layers(model)
        if layers is not None and layer not in (allowed := sorted(layers)):
            raise SiteError(
                f"Site {site}: the kind {site.kind!r} exists at layers {allowed} only (it views "
                f"{extension.host} there)."
            )
    if site.head is not None:
        n_heads = n_units(model, site.kind)
        if not 0 <= site.head < n_heads:
            what = "units" if extension else "key/value heads" if site.kind in KV_KINDS else "heads"
            raise SiteError(
                f"Site {site} names {what[:-1]} {site.head}, but layer {layer} has {n_heads} {what} "
                f"(valid: 0..{n_heads - 1})."
            )
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is not None and site.host.hook_name not in hook_dict:
        available = sorted({k for k in KINDS if _kind_available(k, hook_dict)})
        raise SiteError(
            f"Site {site} ({site.hook_name}) does not exist in this model (e.g. attention-only "
            f"models have no MLP sites). Kinds this model has: {', '.join(available)}."
        )
    return site


def _kind_available(kind: str, hook_dict: Any) -> bool:
    site = Site(kind, 0) if kind in LAYER_KINDS else Site(kind)
    return site.hook_name in hook_dict


def stop_layer(sites: Iterable[Site], n_layers: int) -> int | None:
    """The first block no site of ``sites`` needs (0 when only embeddings are read), for
    ``stop_at_layer``; ``None`` when a site needs the whole model or the last block is needed."""
    stops = []
    for site in sites:
        host = site.host
        if host.kind in ("embed", "pos_embed"):
            stops.append(0)
        elif host.layer is None:
            return None
        else:
            stops.append(host.layer + 1)
    stop = max(stops, default=n_layers)
    return stop if stop < n_layers else None


def n_units(model: Any, kind: str) -> int:
    """How many heads (per-head kinds) or units (extension kinds) sites of ``kind`` have in ``model``."""
    extension = None if kind in KINDS else _extension(kind)
    return n_heads_for(model.cfg, kind) if extension is None else int(extension.width(model))


def layer_sites(model: Any, kind: str) -> list[Site]:
    """One site of ``kind`` per layer of ``model`` (an extension kind: per layer where it exists)."""
    extension = None if kind in KINDS else _extension(kind)
    layers = None if extension is None else extension.layers(model)
    chosen = range(model.cfg.n_layers) if layers is None else sorted(layers)
    return [validate(Site(kind, layer), model) for layer in chosen]


def head_sites(model: Any, kind: str = "z") -> list[Site]:
    """One site per (layer, head) for a per-head ``kind``, layer-major."""
    if not has_units(kind):
        raise SiteError(f"{kind!r} has no heads; per-head kinds are {', '.join(HEAD_KINDS)}.")
    n_heads = n_units(model, kind)
    return [site.with_(head=head) for site in layer_sites(model, kind) for head in range(n_heads)]
