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

Each shortcut is verified once per ``Runner`` against the model's own logits and dropped if it
does not reproduce them, so a shortcut can never change a result (``Runner.mode`` says which ran).

TransformerLens 4 bridges expose ``hook_resid_mid`` as the input of the second norm only: a
replacement there reaches the MLP but not the residual stream. The runner patches ``resid_mid``
through ``attn_out`` instead (``attn_out' = resid_mid_source - resid_pre``), which moves both.
"""

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor

from mechlab.capture import Activations, capture
from mechlab.interventions.hooks import hooked
from mechlab.sites import Site
from mechlab.types import HookedModel, Tokens

BlockCall = tuple[tuple[Any, ...], dict[str, Any]]
Mode = Literal["prefix", "resume", "full"]
TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Replacement:
    """Within one variant, replace ``site``'s slice (its head/pos) with the same slice of ``source``.

    ``source`` has the hooked tensor's shape ``[batch, ...]`` (or broadcasts to it), its position
    axis starting at position ``offset``. It is never modified.
    """

    site: Site
    source: Tensor
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
        self._calls, self._full_calls = calls, calls
        self._kv: list[tuple[Tensor, Tensor]] | None = None
        self._resid = {layer: self.reference[Site("resid_pre", layer)] for layer in layers}
        self.offset = 0
        self.mode: Mode = self._choose_mode(prefix, layers)

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def logits(self) -> Tensor:
        """The unpatched target run's logits ``[batch, pos, d_vocab]``."""
        assert self.reference.logits is not None
        return self.reference.logits

    def _choose_mode(self, prefix: int, layers: list[int]) -> Mode:
        if not layers or not self._calls:
            return "full"
        wanted = self.logits if self.positions is None else self.logits[:, self.positions]
        usable = self.positions is not None and 0 < prefix <= min(self.positions)
        if usable and self._try_prefix(prefix, layers):
            with torch.no_grad():
                resumed = self._final(self._resume(self._resid[0], 0, None, 1, self._kv_cache(1)))
            if _close(resumed, wanted):
                return "prefix"
            self._setup_prefix(0, layers)
        with torch.no_grad():
            resumed = self._final(self._resume(self._resid[0], 0, None, 1, None))
        return "resume" if _close(resumed, wanted) else "full"

    def _try_prefix(self, prefix: int, layers: list[int]) -> bool:
        try:
            return self._setup_prefix(prefix, layers)
        except (TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError):
            # A model whose blocks do not take a key/value cache: use the other strategies.
            self._setup_prefix(0, layers)
            return False

    def _setup_prefix(self, prefix: int, layers: list[int]) -> bool:
        """Compute the shared prefix's keys/values and the suffix's block inputs (or undo them)."""
        if prefix == 0:
            self._kv, self.offset = None, 0
            self._resid = {layer: self.reference[Site("resid_pre", layer)] for layer in layers}
            self._calls = self._full_calls
            return False
        from transformers import DynamicCache

        with torch.no_grad():
            cache = DynamicCache()
            self.model(self.tokens[:, :prefix], past_key_values=cache)
            layers_kv = getattr(cache, "layers", [])
            kv: list[tuple[Tensor, Tensor]] = [(lk.keys.clone(), lk.values.clone()) for lk in layers_kv]
            if len(kv) != len(_blocks(self.model) or []):
                return False
            self._kv, self.offset = kv, prefix
            suffix = [Site("resid_pre", layer) for layer in layers]
            with recording_block_calls(self.model) as calls:
                kept: dict[Site, Tensor] = {}
                hooks = [(s, lambda act, site: kept.__setitem__(site, act.clone())) for s in suffix]
                with hooked(self.model, hooks):
                    self.model(self.tokens[:, prefix:], past_key_values=self._kv_cache(1))
        self._calls, self._resid = calls, {s.layer: kept[s] for s in suffix if s.layer is not None}
        return True

    def _kv_cache(self, times: int) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (keys, values) in enumerate(self._kv or []):
            cache.update(keys.repeat(times, 1, 1, 1), values.repeat(times, 1, 1, 1), layer)
        return cache

    def _final(self, resid: Tensor) -> Tensor:
        model: Any = self.model
        if self.positions is not None:
            resid = resid[:, [p - self.offset for p in self.positions]]
        return model.unembed(model.ln_final(resid))

    def _resume(self, resid: Tensor, start: int, stop: int | None, times: int, kv: Any) -> Tensor:
        blocks = _blocks(self.model) or []
        for layer in range(start, len(blocks) if stop is None else stop):
            args, kwargs = self._calls[layer]
            kwargs = {k: _tile(v, self.batch, times) for k, v in kwargs.items()}
            if "past_key_values" in kwargs:
                kwargs["past_key_values"] = kv
            if "use_cache" in kwargs:
                kwargs["use_cache"] = kv is not None
            out = blocks[layer](resid, *[_tile(a, self.batch, times) for a in args], **kwargs)
            resid = out[0] if isinstance(out, tuple) else out
        return resid

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
                ``self.offset``).
            logits: whether to compute logits (skipped when only captures are wanted).

        Returns:
            logits ``[variant, batch, len(positions), d_vocab]`` (all positions from ``offset``
            when ``positions`` is None), or ``None``; and ``{site: [variant, batch, ...]}``.
        """
        times = len(variants)
        captured: dict[Site, Tensor] = {}
        hooks = _patch_hooks(variants, self.batch, self.offset) + _capture_hooks(capture, captured, times)
        stop = None if logits else _stop_layer(capture)
        kv = self._kv_cache(times) if self.mode == "prefix" else None
        out: Tensor | None = None
        with torch.no_grad(), hooked(self.model, hooks):
            if self.mode != "full" and start is not None:
                resid = self._resume(self._resid[start].repeat(times, 1, 1), start, stop, times, kv)
                out = self._final(resid) if logits else None
            elif self.mode == "prefix":
                full = self.model(self.tokens[:, self.offset :].repeat(times, 1), past_key_values=kv)
                out = full[:, [p - self.offset for p in self.positions or []]]
            else:
                full = self.model(self.tokens.repeat(times, 1))
                out = full if self.positions is None else full[:, self.positions]
        if out is None or not logits:
            return None, captured
        return out.reshape(times, self.batch, *out.shape[1:]), captured


def _stop_layer(capture: Sequence[Site]) -> int | None:
    layers = [site.layer for site in capture]
    if not layers or any(layer is None for layer in layers):
        return None
    return max(layer for layer in layers if layer is not None) + 1


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
        site = entries[0][1].site.with_(head=None, pos=None)
        hooks.append((site, _replacer(entries, batch, times, offset, None)))
    for layer, entries in mid.items():
        seen: dict[str, Tensor] = {}
        hooks.append((Site("resid_pre", layer), lambda act, site, seen=seen: seen.__setitem__("pre", act)))
        hooks.append((Site("attn_out", layer), _replacer(entries, batch, times, offset, seen)))
    return hooks


def _replacer(
    entries: list[tuple[int, Replacement]],
    batch: int,
    times: int,
    offset: int,
    minus: dict[str, Tensor] | None,
) -> Callable[..., Tensor]:
    """Replace each entry's slice; with ``minus``, write ``source - minus["pre"]`` (resid_mid)."""

    def replace(act: Tensor, _: Site) -> Tensor:
        out = act.clone()
        rows = out.view(times, batch, *act.shape[1:])
        pre = None if minus is None else minus["pre"].view(times, batch, *act.shape[1:])
        for v, rep in entries:
            local = _local(rep, offset, rows[v])
            if local is None:
                continue
            site, source = local
            index = site.index(rows[v])
            rows[v][index] = source[index] if pre is None else source[index] - pre[v][index]
        return out

    return replace


def _capture_hooks(capture: Sequence[Site], into: dict[Site, Tensor], times: int) -> list[tuple[Site, Any]]:
    def keep(act: Tensor, site: Site) -> None:
        into[site] = act.detach().clone().view(times, -1, *act.shape[1:])

    return [(site, keep) for site in capture]
