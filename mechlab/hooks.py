"""Scoped hooks: the one way mechlab attaches functions to a model's hook points.

``hooked(model, {site: fn})`` is a context manager. Inside it the hook functions run on every
forward (or backward) pass; on exit — normal or by exception — every hook it added is removed.
Hook functions take ``(activation, site)`` and return a replacement tensor or ``None``. An exception
inside a hook function is re-raised as ``HookError`` naming the site, with the original as cause.

A site of an extension kind (``mechlab.site_kinds``: a view of a hook point, such as a dictionary's
latents) is hooked at its host's hook point: the function sees the view, and a replacement it
returns is written back into the host activation.

Two building blocks record activations: ``recorder(into)`` stores what a forward pass computes, and
``differentiable(model, sites)`` makes each activation something ``gradients(value, acts, sites)``
can differentiate to (attribution patching and EAP-IG both use it). ``zero_ablation(sites)`` gives
the hooks that zero-ablate sites (e.g. heads), editing copies of the activations.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

import torch
from torch import Tensor

from mechlab.errors import (
    MSG_DISCONNECTED,
    MSG_NOT_DIFFERENTIABLE,
    HookError,
    InputError,
    MechlabError,
    SiteError,
)
from mechlab.sites import Site, validate
from mechlab.types import HookedModel

SiteHook: TypeAlias = Callable[[Tensor, Site], Tensor | None]
HookSpec: TypeAlias = Mapping[Site, SiteHook] | Sequence[tuple[Site, SiteHook]]


def _items(hooks: HookSpec) -> list[tuple[Site, SiteHook]]:
    return list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)


def _wrap(site: Site, fn: SiteHook) -> Callable[..., Tensor | None]:
    extension = site.extension

    def call(act: Tensor) -> Tensor | None:
        if extension is None:
            return fn(act, site)
        # An extension site is a view of its host: hand the view over, write a replacement back.
        view = extension.read(act, site.layer)
        new = fn(view, site)
        return None if new is None else extension.write(act, site.layer, new)

    def hook_fn(act: Tensor, hook: Any) -> Tensor | None:
        try:
            return call(act)
        except MechlabError:
            raise
        except Exception as error:
            raise HookError(
                f"The hook at {site} ({site.hook_name}) raised {type(error).__name__}: {error}. "
                "The hooks were removed; fix the hook function and run again."
            ) from error

    return hook_fn


def to_tl_hooks(model: HookedModel, hooks: HookSpec) -> list[tuple[str, Callable[..., Any]]]:
    """Validate sites and turn ``{site: fn}`` into TransformerLens ``(hook_name, fn)`` pairs (an
    extension site's hook runs at its host's hook point)."""
    pairs = []
    for site, fn in _items(hooks):
        checked = validate(site, model)
        pairs.append((checked.host.hook_name, _wrap(checked, fn)))
    return pairs


@contextmanager
def hooked(model: HookedModel, forward: HookSpec = (), *, backward: HookSpec = ()) -> Iterator[HookedModel]:
    """Attach forward (and backward) hooks by Site for the duration of a ``with`` block.

    Args:
        model: a HookedTransformer-protocol model.
        forward: ``{site: fn}`` or ``[(site, fn), ...]``; ``fn(activation, site)`` may return a
            replacement activation.
        backward: the same for gradients; ``fn(grad, site)``.

    Every site is validated before any hook is attached, so a bad site attaches nothing.
    """
    fwd = to_tl_hooks(model, forward)
    bwd = to_tl_hooks(model, backward)
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=True):
        yield model


def active_hook_count(model: Any) -> int:
    """Number of hooks currently attached to the model's hook points (0 when nothing is hooked)."""
    points = {id(hp): hp for hp in model.hook_dict.values()}  # aliases map to one HookPoint
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in points.values())


def recorder(into: dict[Site, Tensor], *, sliced: bool = False, copy: bool = True) -> SiteHook:
    """A hook that stores each activation it sees in ``into[site]`` and changes nothing.

    Args:
        into: where to store, keyed by the hooked site.
        sliced: keep only the site's head/position slice (``site.index``).
        copy: store a detached copy (safe after the forward pass); ``False`` stores the tensor
            itself, for use by another hook in the same pass.
    """

    def record(act: Tensor, site: Site) -> None:
        value = act[site.index(act)] if sliced else act
        into[site] = value.detach().clone() if copy else value

    return record


def zero(act: Tensor, site: Site) -> Tensor:
    """A hook that zeroes the site's slice (e.g. one head of ``z``) in a copy of the activation."""
    out = act.clone()
    out[site.index(act)] = 0.0
    return out


def zero_ablation(sites: Iterable[Site]) -> dict[Site, SiteHook]:
    """``{site: zero}`` for ``hooked``: zero-ablate each site, e.g. heads ``Site("z", layer, head)``.

    >>> import mechlab
    >>> model = mechlab.load_model("toy:attn-only-2l").model
    >>> tokens = torch.tensor([[0, 5, 6, 5, 6]])
    >>> with hooked(model, zero_ablation([Site("z", 0, 1)])):
    ...     ablated = model(tokens)
    >>> bool((ablated != model(tokens)).any())
    True
    """
    return dict.fromkeys(sites, zero)


def _leaf(into: dict[Site, Tensor]) -> SiteHook:
    def make_leaf(act: Tensor, site: Site) -> Tensor:
        value = act if act.requires_grad else act.detach().requires_grad_(True)
        into[site] = value
        return value

    return make_leaf


@contextmanager
def differentiable(
    model: HookedModel, sites: Sequence[Site], *, replace: HookSpec = ()
) -> Iterator[dict[Site, Tensor]]:
    """Within the block, forward passes record the activation at each of ``sites`` as a tensor that
    requires grad (a new leaf where it needed none), so ``gradients`` can be taken to it.

    Args:
        model: the model.
        sites: where to record (whole hooked tensors).
        replace: hooks that run first at their sites (e.g. to substitute an input embedding).

    Yields:
        ``{site: activation}``, filled by each forward pass inside the block (grad mode is on).
    """
    acts: dict[Site, Tensor] = {}
    hooks = [*_items(replace), *((site, _leaf(acts)) for site in dict.fromkeys(sites))]
    with torch.enable_grad(), hooked(model, hooks):
        yield acts


def gradients(
    value: Tensor, acts: Mapping[Site, Tensor], sites: Sequence[Site], *, retain_graph: bool = False
) -> dict[Site, Tensor]:
    """``∂ value.sum() / ∂ acts[site]`` for each site.

    Raises:
        InputError: the value depends on none of the activations (a metric that is not
            differentiable, or that ignores the logits).
        SiteError: the value does not depend on a site's activation (its hook is not fed back into
            the model), so no gradient exists there.
    """
    if not value.requires_grad:
        raise InputError(MSG_NOT_DIFFERENTIABLE.format(sites=", ".join(str(s) for s in sites)))
    inputs = [acts[site] for site in sites]
    grads = torch.autograd.grad(value.sum(), inputs, allow_unused=True, retain_graph=retain_graph)
    for site, grad in zip(sites, grads, strict=True):
        if grad is None:
            raise SiteError(MSG_DISCONNECTED.format(site=site, hook=site.hook_name))
    return {site: grad.detach() for site, grad in zip(sites, grads, strict=True)}
