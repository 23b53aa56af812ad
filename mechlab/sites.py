"""Sites: typed names for the places in a transformer where activations can be read or replaced.

A ``Site`` is a frozen value ``Site(kind, layer, head=None, pos=None)``; ``site.hook_name`` turns it
into the HookedTransformer hook name (``Site("z", 3, 5).hook_name == "blocks.3.attn.hook_z"``).
This module is the only place in mechlab where hook-name strings are built.

``head`` and ``pos`` do not change the hook name: they say which slice of the hooked tensor the
site means. Per-head kinds carry a head axis; ``k`` and ``v`` count key/value heads, which are fewer
than query heads in grouped-query attention models (SmolLM2: 9 query heads, 3 key/value heads).

String form, for the command line: ``kind[.layer[.head]][@pos]``, e.g. ``"z.3.5"``,
``"resid_pre.4@7"``, ``"embed"``.
"""

import dataclasses
import re
from typing import Any, Literal, get_args

from torch import Tensor

from mechlab.errors import SiteError

LayerKind = Literal[
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "mlp_pre",
    "mlp_post",
    "ln1_scale",
    "ln2_scale",
    "z",
    "q",
    "k",
    "v",
    "pattern",
    "attn_scores",
]
GlobalKind = Literal["embed", "pos_embed", "ln_final", "ln_final_scale"]
SiteKind = Literal[LayerKind, GlobalKind]

LAYER_KINDS: tuple[str, ...] = get_args(LayerKind)
GLOBAL_KINDS: tuple[str, ...] = get_args(GlobalKind)
KINDS: tuple[str, ...] = LAYER_KINDS + GLOBAL_KINDS
HEAD_KINDS: tuple[str, ...] = ("z", "q", "k", "v", "pattern", "attn_scores")
KV_KINDS: tuple[str, ...] = ("k", "v")
PATTERN_KINDS: tuple[str, ...] = ("pattern", "attn_scores")
RESID_KINDS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")

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
        kind: one of ``KINDS``.
        layer: block index for layer kinds; ``None`` for global kinds (``embed``, ``ln_final``…).
        head: a head index for per-head kinds (``z q k v pattern attn_scores``), else ``None``.
        pos: a position (query position for ``pattern``/``attn_scores``), or ``None`` for all.
    """

    kind: str
    layer: int | None = None
    head: int | None = None
    pos: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SiteError(
                f"Unknown site kind {self.kind!r}. Valid kinds: per layer {', '.join(LAYER_KINDS)}; "
                f"global {', '.join(GLOBAL_KINDS)}."
            )
        if self.kind in LAYER_KINDS and self.layer is None:
            raise SiteError(f"Site kind {self.kind!r} needs a layer, e.g. Site({self.kind!r}, 0).")
        if self.kind in GLOBAL_KINDS and self.layer is not None:
            raise SiteError(f"Site kind {self.kind!r} is not per layer; drop layer={self.layer}.")
        if self.head is not None and self.kind not in HEAD_KINDS:
            raise SiteError(
                f"Site kind {self.kind!r} has no head axis (got head={self.head}); per-head kinds "
                f"are {', '.join(HEAD_KINDS)}."
            )

    @property
    def hook_name(self) -> str:
        """The HookedTransformer hook name of this site."""
        if self.kind in GLOBAL_KINDS:
            return _GLOBAL_NAMES[self.kind]
        return _LAYER_TEMPLATES[self.kind].format(layer=self.layer)

    @property
    def head_axis(self) -> int | None:
        """Axis of the head dimension in the hooked tensor, or None if the kind has none."""
        if self.kind in PATTERN_KINDS:
            return 1
        return 2 if self.kind in HEAD_KINDS else None

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
                f"'resid_pre.4@7' or 'embed'. Valid kinds: {', '.join(KINDS)}."
            )
        groups = match.groupdict()
        return cls(
            kind=groups["kind"],
            layer=None if groups["layer"] is None else int(groups["layer"]),
            head=None if groups["head"] is None else int(groups["head"]),
            pos=None if groups["pos"] is None else int(groups["pos"]),
        )


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
    if site.head is not None:
        n_heads = n_heads_for(cfg, site.kind)
        if not 0 <= site.head < n_heads:
            what = "key/value heads" if site.kind in KV_KINDS else "heads"
            raise SiteError(
                f"Site {site} names head {site.head}, but layer {layer} has {n_heads} {what} "
                f"(valid: 0..{n_heads - 1})."
            )
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is not None and site.hook_name not in hook_dict:
        available = sorted({k for k in KINDS if _kind_available(k, hook_dict)})
        raise SiteError(
            f"Site {site} ({site.hook_name}) does not exist in this model (e.g. attention-only "
            f"models have no MLP sites). Kinds this model has: {', '.join(available)}."
        )
    return site


def _kind_available(kind: str, hook_dict: Any) -> bool:
    site = Site(kind, 0) if kind in LAYER_KINDS else Site(kind)
    return site.hook_name in hook_dict


def layer_sites(model: Any, kind: str) -> list[Site]:
    """One site of ``kind`` per layer of ``model``."""
    return [validate(Site(kind, layer), model) for layer in range(model.cfg.n_layers)]


def head_sites(model: Any, kind: str = "z") -> list[Site]:
    """One site per (layer, head) for a per-head ``kind``, layer-major."""
    if kind not in HEAD_KINDS:
        raise SiteError(f"{kind!r} has no heads; per-head kinds are {', '.join(HEAD_KINDS)}.")
    n_heads = n_heads_for(model.cfg, kind)
    return [Site(kind, layer, head) for layer in range(model.cfg.n_layers) for head in range(n_heads)]
