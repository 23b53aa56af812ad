"""Scoped hooks: the one way mechlab attaches functions to a model's hook points.

``hooked(model, {site: fn})`` is a context manager. Inside it the hook functions run on every
forward (or backward) pass; on exit — normal or by exception — every hook it added is removed.
Hook functions take ``(activation, site)`` and return a replacement tensor or ``None``. An exception
inside a hook function is re-raised as ``HookError`` naming the site, with the original as cause.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

from torch import Tensor

from mechlab.errors import HookError, MechlabError
from mechlab.sites import Site, validate
from mechlab.types import HookedModel

SiteHook: TypeAlias = Callable[[Tensor, Site], Tensor | None]
HookSpec: TypeAlias = Mapping[Site, SiteHook] | Sequence[tuple[Site, SiteHook]]


def _items(hooks: HookSpec) -> list[tuple[Site, SiteHook]]:
    return list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)


def _wrap(site: Site, fn: SiteHook) -> Callable[..., Tensor | None]:
    def hook_fn(act: Tensor, hook: Any) -> Tensor | None:
        try:
            return fn(act, site)
        except MechlabError:
            raise
        except Exception as error:
            raise HookError(
                f"The hook at {site} ({site.hook_name}) raised {type(error).__name__}: {error}. "
                "The hooks were removed; fix the hook function and run again."
            ) from error

    return hook_fn


def to_tl_hooks(model: HookedModel, hooks: HookSpec) -> list[tuple[str, Callable[..., Any]]]:
    """Validate sites and turn ``{site: fn}`` into TransformerLens ``(hook_name, fn)`` pairs."""
    pairs = []
    for site, fn in _items(hooks):
        checked = validate(site, model)
        pairs.append((checked.hook_name, _wrap(checked, fn)))
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
