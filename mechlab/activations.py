"""Capture: cache the activations you ask for, and only those.

``run_with_cache`` without a filter keeps every hook of every layer — for SmolLM2 on one 64-token
prompt that is ~40 hook points × 30 layers. ``capture(model, tokens, sites)`` keeps exactly the
requested sites, sliced to their head and position when the Site names one, after checking with
``estimate_memory`` that they (and the logits, which for a 49k-token vocabulary often outweigh them)
fit under a limit (``max_bytes``; ``None`` lifts it). Look-ups accept negative layers and positions:
``acts["resid_post.-1@-1"]``.

For datasets too large for memory, ``capture_dataset`` (``mechlab.shards``) streams batches to
safetensors shards on disk.

    >>> import mechlab, torch
    >>> model = mechlab.load_model("toy:tiny").model
    >>> sites = [mechlab.Site("z", 1, head=2), "resid_pre.0"]
    >>> acts = mechlab.capture(model, torch.tensor([[1, 2, 3]]), sites)
    >>> tuple(acts[mechlab.Site("z", 1, head=2)].shape), tuple(acts["resid_pre.0"].shape)
    ((1, 3, 8), (1, 3, 32))
"""

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor

from mechlab.errors import MSG_MEMORY_LIMIT, MemoryLimitError, SiteError
from mechlab.hooks import hooked, recorder
from mechlab.sites import (
    HEAD_KINDS,
    PATTERN_KINDS,
    Site,
    fit_site,
    has_units,
    is_layer_kind,
    layer_sites,
    lookup_key,
    n_heads_for,
    n_units,
    stop_layer,
    validate,
)
from mechlab.types import HookedModel, Logits, Tokens

SitesSpec: TypeAlias = Site | str | Sequence[Site | str]
DEFAULT_MAX_BYTES = 2 * 1024**3


def resolve_sites(model: HookedModel, sites: SitesSpec) -> list[Site]:
    """Validated Sites from a Site, a site string (``"z.3.5"``) or a kind (``"z"``: every layer)."""
    items = [sites] if isinstance(sites, Site | str) else list(sites)
    if not items:
        raise SiteError("No sites given: pass Sites, site strings like 'z.3.5', or kinds like 'resid_pre'.")
    out: list[Site] = []
    for item in items:
        if isinstance(item, str) and is_layer_kind(item):
            out.extend(layer_sites(model, item))
        else:
            out.append(validate(Site.parse(item) if isinstance(item, str) else item, model))
    return list(dict.fromkeys(out))


def _width(cfg: Any, kind: str, n_pos: int) -> int:
    """Elements per (prompt, position) of a kind's full hooked tensor."""
    if kind in PATTERN_KINDS:
        return int(cfg.n_heads) * n_pos
    if kind in HEAD_KINDS:
        return n_heads_for(cfg, kind) * int(cfg.d_head)
    if kind in ("mlp_pre", "mlp_post"):
        return int(cfg.d_mlp)
    if kind.endswith("scale"):
        return 1
    return int(cfg.d_model)


def site_numel(model: HookedModel, site: Site, batch: int, n_pos: int) -> int:
    """Number of elements ``capture`` stores for ``site`` on a ``[batch, n_pos]`` input."""
    units = n_units(model, site.kind) if has_units(site.kind) else 1
    width = units if site.extension is not None else _width(model.cfg, site.kind, n_pos)
    if site.head is not None:
        width //= units
    positions = 1 if site.pos is not None else n_pos
    return batch * positions * width


def _itemsize(model: HookedModel) -> int:
    dtype = getattr(model.cfg, "dtype", None)
    return torch.empty((), dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32).element_size()


def _human(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes ``capture`` would hold for each site and for the logits, and their total."""

    per_site: Mapping[Site, int]
    shape: tuple[int, int]
    logits: int = 0

    @property
    def total(self) -> int:
        return sum(self.per_site.values()) + self.logits

    def largest(self) -> tuple[Site, int]:
        return max(self.per_site.items(), key=lambda item: item[1])

    def __str__(self) -> str:
        site, size = self.largest()
        logits = f", logits {_human(self.logits)}" if self.logits else ""
        return (
            f"{_human(self.total)} for {len(self.per_site)} site(s) (largest: {site} {_human(size)}{logits})"
        )


def estimate_memory(
    model: HookedModel, tokens: Tokens, sites: SitesSpec, *, logits: bool = True
) -> MemoryEstimate:
    """How many bytes caching ``sites`` for ``tokens`` takes, computed from shapes (no forward).

    Args:
        model: the model (its config gives widths and dtype).
        tokens: token ids ``[batch, pos]``.
        sites: as for ``capture``.
        logits: count the logits ``[batch, pos, d_vocab]`` too (``capture`` keeps them by default).
    """
    batch, n_pos = int(tokens.shape[0]), int(tokens.shape[-1])
    itemsize = _itemsize(model)
    per_site = {s: site_numel(model, s, batch, n_pos) * itemsize for s in resolve_sites(model, sites)}
    logit_bytes = batch * n_pos * int(model.cfg.d_vocab) * itemsize if logits else 0
    return MemoryEstimate(per_site, (batch, n_pos), logit_bytes)


class Activations(Mapping[Site, Tensor]):
    """Captured activations by Site (also by site string), plus the run's logits.

    ``acts[Site("z", 3, 5)]`` is ``[batch, pos, d_head]``; negative layers and positions count from
    the end (``acts["resid_post.-1@-1"]``). ``acts.to_cache(model)`` gives a TransformerLens
    ``ActivationCache`` of the full (unsliced) sites, keyed by hook name.
    """

    def __init__(
        self, values: dict[Site, Tensor], logits: Logits | None, tokens: Tokens, n_layers: int | None = None
    ) -> None:
        self._values = values
        self.logits = logits
        self.tokens = tokens
        self.n_layers = n_layers

    def _key(self, key: Site | str) -> Site:
        return lookup_key(key, self.n_layers, int(self.tokens.shape[-1]))

    def __getitem__(self, key: Site | str) -> Tensor:
        site = self._key(key)
        if site not in self._values:
            held = ", ".join(str(s) for s in self._values)
            raise KeyError(f"{site} was not captured; captured sites: {held}.")
        return self._values[site]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, Site | str):
            return False
        try:
            return self._key(key) in self._values
        except SiteError:  # not a site at all (e.g. a bare kind such as "resid_pre")
            return False

    def __iter__(self) -> Iterator[Site]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def nbytes(self) -> int:
        """Bytes held by the activations and the logits."""
        held = [*self._values.values(), *([] if self.logits is None else [self.logits])]
        return sum(t.numel() * t.element_size() for t in held)

    def to_cache(self, model: HookedModel) -> Any:
        """A TransformerLens ``ActivationCache`` of the sites captured without head/pos slicing."""
        from transformer_lens.ActivationCache import ActivationCache

        full = {s.hook_name: t for s, t in self._values.items() if s.head is None and s.pos is None}
        return ActivationCache(full, model)

    def __repr__(self) -> str:
        return f"Activations({len(self)} sites, {_human(self.nbytes)}, tokens {tuple(self.tokens.shape)})"


def capture(
    model: HookedModel,
    tokens: Tokens,
    sites: SitesSpec,
    *,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    logits: bool = True,
) -> Activations:
    """Run ``tokens`` once and keep the activations at ``sites`` (sliced to their head/position).

    Args:
        model: a HookedTransformer-protocol model.
        tokens: token ids ``[batch, pos]``.
        sites: a Site, a site string (``"z.3.5"``, ``"resid_pre.4@-1"``), a kind (``"resid_post"``:
            every layer), or a list of these.
        max_bytes: refuse (``MemoryLimitError``) when the estimate exceeds it; ``None``: no limit.
        logits: keep the logits too; without them the blocks after the deepest site are not run.

    Returns:
        ``Activations``: detached copies, so later runs never change them; keyed by the sites with
        non-negative layers and positions.
    """
    n_pos = int(tokens.shape[-1])
    wanted = list(dict.fromkeys(fit_site(site, n_pos) for site in resolve_sites(model, sites)))
    estimate = estimate_memory(model, tokens, wanted, logits=logits)
    if max_bytes is not None and estimate.total > max_bytes:
        site, size = estimate.largest()
        raise MemoryLimitError(
            MSG_MEMORY_LIMIT.format(
                n_sites=len(wanted),
                shape=tuple(tokens.shape),
                needed=_human(estimate.total),
                limit=_human(max_bytes),
                largest=f"largest: {site} {_human(size)}"
                + (f"; logits {_human(estimate.logits)}" if estimate.logits else ""),
            )
        )
    values: dict[Site, Tensor] = {}
    keep = recorder(values, sliced=True)
    # Without logits, the blocks after the deepest site are not run.
    stop = None if logits else stop_layer(wanted, int(model.cfg.n_layers))
    with torch.no_grad(), hooked(model, [(site, keep) for site in wanted]):
        out = model(tokens) if stop is None else model(tokens, stop_at_layer=stop)
    kept = {site: values[site] for site in wanted}
    return Activations(kept, out.detach() if logits else None, tokens, int(model.cfg.n_layers))
