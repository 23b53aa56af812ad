"""Batched patched forward passes: many variants of one batch of prompts in a single forward.

A sweep patches hundreds of sites one at a time. Running them one forward each (as
``transformer_lens.patching`` does) repeats the same work hundreds of times; mechlab stacks ``V``
variants of a ``B``-prompt batch into ``V·B`` rows, each row block carrying its own replacements,
and scores all of them with one call of the metric. Two shortcuts skip work that cannot change:

- **Resume at the first patched block.** A variant that first changes block ``L`` has the
  unpatched activations before ``L``, so its run starts at block ``L`` from the cached residual
  stream: blocks are called directly with the arguments recorded from the unpatched run (rotary
  tables, masks), then the final norm and unembedding run on the positions the metric reads.
- **Share the common prefix.** In a causal model the clean and corrupted runs agree at every
  position before the first token where the prompts differ, so patching there changes nothing.
  With ``prefix=d`` the runner computes the first ``d`` positions once, keeps their keys and
  values, and runs the variants on positions ``d…`` only (attention reads the kept keys/values).

Each shortcut is an immutable ``Strategy``. A ``Runner`` checks a strategy once, on two stacked
copies of the unpatched batch, against the model's own logits (within ``TOLERANCE``, relative) and
falls back to the next (prefix → resume → full) when it does not reproduce them; ``Runner.mode``
and ``PatchResult.mode`` say which ran. The check runs without replacements; that patched runs agree
too is what the tests establish, comparing the three modes with each other and with
TransformerLens's own patching.

TransformerLens-native models (``toy:``) accept no key/value cache, so they run ``"resume"``;
Hugging Face-backed models (GGUF, HF directories) run ``"prefix"`` when the prompts share a prefix.

TransformerLens 4 bridges expose ``hook_resid_mid`` as the input of the second norm only: a
replacement there reaches the MLP but not the residual stream. The runner patches ``resid_mid``
through ``attn_out`` instead (``attn_out' = resid_mid_source - resid_pre``), which moves both.
"""

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.activations import Activations, capture
from mechlab.hooks import hooked, recorder
from mechlab.models import kv_cache
from mechlab.sites import Site, stop_layer
from mechlab.types import HookedModel, Tokens

BlockCall = tuple[tuple[Any, ...], dict[str, Any]]
Mode = Literal["prefix", "resume", "full"]
# The strategies a Runner may use, fastest first (tests narrow this to compare them).
STRATEGIES: tuple[Mode, ...] = ("prefix", "resume", "full")
TOLERANCE = 1e-4
# The names under which a block receives the key/value cache (transformers < 5.24, ≥ 5.24).
CACHE_KEYWORDS = frozenset({"past_key_values", "cache"})


@dataclasses.dataclass(frozen=True, eq=False)
class Replacement:
    """Within one variant, replace ``site``'s slice (its head/pos) with the same slice of ``source``.

    ``source`` has the hooked tensor's shape ``[batch, ...]`` (or broadcasts to it), its position
    axis starting at position ``offset``. It is never modified.
    """

    site: Site
    source: Float[Tensor, "#batch *rest"]
    offset: int = 0


def _blocks(model: HookedModel) -> list[torch.nn.Module] | None:
    blocks = getattr(model, "blocks", None)
    if blocks is None or getattr(model, "ln_final", None) is None or getattr(model, "unembed", None) is None:
        return None
    return list(blocks)


@contextmanager
def recording_block_calls(model: HookedModel) -> Iterator[dict[int, BlockCall]]:
    """Record the arguments (after the residual) each block receives during the ``with`` body."""
    calls: dict[int, BlockCall] = {}
    blocks = _blocks(model) or []

    def recorder(layer: int) -> Callable[..., None]:
        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls[layer] = (tuple(args[1:]), dict(kwargs))

        return pre_hook

    handles = [b.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _tile(value: Any, batch: int, times: int) -> Any:
    """Repeat per-prompt tensors (leading axis ``batch``) ``times`` over; leave the rest as is."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch and batch > 1:
        return value.repeat(times, *([1] * (value.ndim - 1)))
    if isinstance(value, tuple):
        return tuple(_tile(v, batch, times) for v in value)
    return value


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= TOLERANCE * max(1.0, float(b.abs().max()))


@dataclasses.dataclass(frozen=True, eq=False)
class Strategy:
    """How patched runs are computed; one immutable value per mode.

    Attributes:
        mode: ``"full"`` runs the model from the tokens; ``"resume"`` starts at the first patched
            block from the cached residual stream; ``"prefix"`` also keeps the shared prefix's
            keys/values and computes positions ``offset…`` only.
        offset: the first position the runs compute.
        resid: the unpatched residual stream entering each resume layer (positions from ``offset``).
        calls: the arguments (after the residual) each block received in the unpatched run.
        kv: the prefix's keys and values per block (``"prefix"`` only).
    """

    mode: Mode
    offset: int = 0
    resid: Mapping[int, Tensor] = dataclasses.field(default_factory=dict)
    calls: Mapping[int, BlockCall] = dataclasses.field(default_factory=dict)
    kv: tuple[tuple[Tensor, Tensor], ...] | None = None

    def cache(self, times: int) -> Any:
        """A fresh key/value cache of the prefix for ``times`` stacked copies (``None`` if none)."""
        if self.kv is None:
            return None
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (keys, values) in enumerate(self.kv):
            cache.update(keys.repeat(times, 1, 1, 1), values.repeat(times, 1, 1, 1), layer)
        return cache


FULL = Strategy("full")


class Runner:
    """Runs patched variants of one target batch with the fastest verified strategy.

    Args:
        model: the model.
        tokens: the target prompts ``[batch, pos]`` (the run being patched).
        keep: sites of the unpatched target run to keep (full tensors) in ``reference``.
        positions: positions whose logits the metric reads (``None``: all).
        resume_layers: the layers runs may start at.
        prefix: leading positions every variant leaves unchanged (0: none).
    """

    def __init__(
        self,
        model: HookedModel,
        tokens: Tokens,
        *,
        keep: Sequence[Site] = (),
        positions: list[int] | None = None,
        resume_layers: Sequence[int] = (),
        prefix: int = 0,
    ) -> None:
        self.model, self.tokens, self.positions = model, tokens, positions
        layers = sorted({0, *resume_layers}) if _blocks(model) is not None else []
        wanted = list(dict.fromkeys([*keep, *(Site("resid_pre", layer) for layer in layers)]))
        with recording_block_calls(model) as calls:
            self.reference: Activations = capture(model, tokens, wanted, max_bytes=None)
        self.strategy = self._choose(prefix, layers, dict(calls))

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def mode(self) -> Mode:
        return self.strategy.mode

    @property
    def offset(self) -> int:
        return self.strategy.offset

    @property
    def logits(self) -> Tensor:
        """The unpatched target run's logits ``[batch, pos, d_vocab]``."""
        assert self.reference.logits is not None
        return self.reference.logits

    def _choose(self, prefix: int, layers: list[int], calls: dict[int, BlockCall]) -> Strategy:
        """The first strategy of ``STRATEGIES`` that is available and reproduces the logits."""
        if not layers or len(calls) < len(_blocks(self.model) or []):
            return FULL
        for mode in STRATEGIES:
            if mode == "prefix":
                candidate = self._prefix(prefix, layers)
            elif mode == "resume":
                resid = {layer: self.reference[Site("resid_pre", layer)] for layer in layers}
                candidate = Strategy("resume", 0, resid, calls)
            else:
                return FULL
            if candidate is not None and self._reproduces(candidate):
                return candidate
        return FULL

    def _prefix(self, prefix: int, layers: list[int]) -> Strategy | None:
        """The prefix strategy, or ``None`` where it does not apply or the model keeps no cache."""
        if self.positions is None or not 0 < prefix <= min(self.positions):
            return None
        cache = kv_cache.new_cache(self.model)
        if cache is None:  # TransformerLens-native models keep no key/value cache
            return None
        with torch.no_grad():
            kv_cache.run(self.model, self.tokens[:, :prefix], cache)
        kv = tuple((lk.keys.clone(), lk.values.clone()) for lk in getattr(cache, "layers", []))
        if len(kv) != len(_blocks(self.model) or []):
            return None  # the blocks ignored the cache (TransformerLens-native models keep none)
        partial = Strategy("prefix", prefix, kv=kv)
        kept: dict[Site, Tensor] = {}
        record = recorder(kept)
        suffix = [(Site("resid_pre", layer), record) for layer in layers]
        with torch.no_grad(), recording_block_calls(self.model) as calls, hooked(self.model, suffix):
            kv_cache.run(self.model, self.tokens[:, prefix:], partial.cache(1))
        resid = {layer: kept[Site("resid_pre", layer)] for layer in layers}
        return dataclasses.replace(partial, resid=resid, calls=dict(calls))

    def _reproduces(self, strategy: Strategy) -> bool:
        """Whether ``strategy`` gives the unpatched logits on two stacked copies of the batch."""
        wanted = self.logits if self.positions is None else self.logits[:, self.positions]
        wanted = wanted.repeat(2, 1, 1)
        with torch.no_grad():
            resid = strategy.resid[0].repeat(2, 1, 1)
            if not _close(self._final(strategy, self._resume(strategy, resid, 0, None, 2)), wanted):
                return False
            if strategy.mode == "prefix":
                return _close(self._from_tokens(strategy, 2), wanted)
        return True

    def _final(self, strategy: Strategy, resid: Tensor) -> Tensor:
        model: Any = self.model
        if self.positions is not None:
            resid = resid[:, [p - strategy.offset for p in self.positions]]
        return model.unembed(model.ln_final(resid))

    def _resume(self, strategy: Strategy, resid: Tensor, start: int, stop: int | None, times: int) -> Tensor:
        blocks = _blocks(self.model) or []
        kv = strategy.cache(times)
        for layer in range(start, len(blocks) if stop is None else stop):
            args, kwargs = strategy.calls[layer]
            kwargs = {k: _tile(v, self.batch, times) for k, v in kwargs.items()}
            for name in CACHE_KEYWORDS & kwargs.keys():
                kwargs[name] = kv
            if "use_cache" in kwargs:
                kwargs["use_cache"] = kv is not None
            out = blocks[layer](resid, *[_tile(a, self.batch, times) for a in args], **kwargs)
            resid = out[0] if isinstance(out, tuple) else out
        return resid

    def _from_tokens(self, strategy: Strategy, times: int) -> Tensor:
        """Logits at ``positions`` of ``times`` stacked copies, run from the tokens."""
        tokens = self.tokens[:, strategy.offset :].repeat(times, 1)
        if strategy.mode == "prefix":
            out = kv_cache.run(self.model, tokens, strategy.cache(times))
            return out[:, [p - strategy.offset for p in self.positions or []]]
        out = self.model(tokens)
        return out if self.positions is None else out[:, self.positions]

    def run(
        self,
        variants: Sequence[Sequence[Replacement]],
        start: int | None,
        *,
        capture: Sequence[Site] = (),
        logits: bool = True,
    ) -> tuple[Tensor | None, dict[Site, Tensor]]:
        """Run ``len(variants)`` patched copies of the target batch in one forward.

        Args:
            variants: the replacements of each variant.
            start: the first block any replacement touches (``None``: before block 0).
            capture: sites whose patched-run activations to return (position axis from
                ``self.offset``); a site before ``start`` is not reached and not returned.
            logits: whether to compute logits (skipped when only captures are wanted).

        Returns:
            logits ``[variant, batch, len(positions), d_vocab]`` (all positions from ``offset``
            when ``positions`` is None), or ``None``; and ``{site: [variant, batch, ...]}``.
        """
        times, strategy = len(variants), self.strategy
        captured: dict[Site, Tensor] = {}
        hooks = _patch_hooks(variants, self.batch, strategy.offset)
        hooks += [(site, recorder(captured)) for site in capture]
        out: Tensor | None = None
        with torch.no_grad(), hooked(self.model, hooks):
            if strategy.mode != "full" and start is not None:
                stop = None if logits or not capture else stop_layer(capture, int(self.model.cfg.n_layers))
                resid = self._resume(strategy, strategy.resid[start].repeat(times, 1, 1), start, stop, times)
                out = self._final(strategy, resid) if logits else None
            else:
                out = self._from_tokens(strategy, times)
        stacked = {site: act.view(times, self.batch, *act.shape[1:]) for site, act in captured.items()}
        if out is None or not logits:
            return None, stacked
        return out.reshape(times, self.batch, *out.shape[1:]), stacked


def _local(rep: Replacement, offset: int, like: Tensor) -> tuple[Site, Tensor] | None:
    """The replacement in the runner's positions (from ``offset``), or None if it is a no-op."""
    site, source = rep.site, rep.source
    if offset > rep.offset and source.shape[site.pos_axis] > 1:
        source = source.narrow(site.pos_axis, offset - rep.offset, like.shape[site.pos_axis])
    if site.pos is not None:
        if site.pos < offset:
            return None
        site = site.with_(pos=site.pos - offset)
    return site, source.expand_as(like)


def _patch_hooks(
    variants: Sequence[Sequence[Replacement]], batch: int, offset: int
) -> list[tuple[Site, Any]]:
    """One hook per hooked tensor, applying every variant's replacements to its row block."""
    direct: dict[str, list[tuple[int, Replacement]]] = {}
    mid: dict[int, list[tuple[int, Replacement]]] = {}
    for v, replacements in enumerate(variants):
        for rep in replacements:
            if rep.site.kind == "resid_mid" and rep.site.layer is not None:
                mid.setdefault(rep.site.layer, []).append((v, rep))
            else:
                direct.setdefault(rep.site.hook_name, []).append((v, rep))
    times = len(variants)
    hooks: list[tuple[Site, Any]] = []
    for entries in direct.values():
        site = entries[0][1].site.whole
        hooks.append((site, _replacer(entries, batch, times, offset)))
    for layer, entries in mid.items():
        seen: dict[Site, Tensor] = {}
        pre = Site("resid_pre", layer)
        hooks.append((pre, recorder(seen, copy=False)))
        hooks.append((Site("attn_out", layer), _replacer(entries, batch, times, offset, seen, pre)))
    return hooks


def _replacer(
    entries: list[tuple[int, Replacement]],
    batch: int,
    times: int,
    offset: int,
    seen: dict[Site, Tensor] | None = None,
    minus: Site | None = None,
) -> Callable[..., Tensor]:
    """Replace each entry's slice; with ``minus``, write ``source - seen[minus]`` (resid_mid)."""

    def replace(act: Tensor, _: Site) -> Tensor:
        out = act.clone()
        rows = out.view(times, batch, *act.shape[1:])
        pre = None if seen is None or minus is None else seen[minus].view(times, batch, *act.shape[1:])
        for v, rep in entries:
            local = _local(rep, offset, rows[v])
            if local is None:
                continue
            site, source = local
            index = site.index(rows[v])
            rows[v][index] = source[index] if pre is None else source[index] - pre[v][index]
        return out

    return replace
