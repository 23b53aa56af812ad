"""Site kinds: the built-in hook-point kinds, and kinds that are a view of a hooked activation.

A built-in site kind (``resid_post``, ``z``…) is a hook point. An extension kind is a *view* of
one: a sparse dictionary's latents at ``resid_post.5``, a basis of directions, a probe's scores.
It says which hook point it views (``host``), how wide the view is (``width``: its units), how to
read the view from the hooked activation, and how to write a changed view back into it. A site of
the kind is then an ordinary ``Site``: ``Site(name, layer, unit)`` (the third field, ``head``, is
the unit), parsed from ``"name.layer.unit"``, and everything that goes through ``hooked`` —
capture, patching, ablation, steering, gradients for attribution patching — accepts it.

Contract for ``write``: writing back the value just read leaves the activation as it was
(``write(act, layer, read(act, layer))`` equals ``act``), and ``write`` is differentiable in the
value, so gradients reach the view. A dictionary keeps its reconstruction error this way:
``act + decode(new) − decode(old)``.

Kinds are registered by name: ``register_site_kind(kind)`` in a session (one line), or an entry
point in the group ``mechlab.site_kinds`` naming a ``SiteKind`` (or a function returning one), read
the first time an unknown name is met.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from mechlab.errors import SiteError
from mechlab.registry import Entry, EntryPointLike, scan

if TYPE_CHECKING:
    from mechlab.types import HookedModel

GROUP = "mechlab.site_kinds"
IN_SESSION = "(registered in this session)"

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
    "mlp_in",
    "ln1_normalized",
    "ln2_normalized",
    "z",
    "q",
    "k",
    "v",
    "pattern",
    "attn_scores",
]
GlobalKind = Literal["embed", "pos_embed", "ln_final", "ln_final_scale"]
BuiltinKind = Literal[LayerKind, GlobalKind]

LAYER_KINDS: tuple[str, ...] = get_args(LayerKind)
GLOBAL_KINDS: tuple[str, ...] = get_args(GlobalKind)
KINDS: tuple[str, ...] = LAYER_KINDS + GLOBAL_KINDS
HEAD_KINDS: tuple[str, ...] = ("z", "q", "k", "v", "pattern", "attn_scores")
KV_KINDS: tuple[str, ...] = ("k", "v")
PATTERN_KINDS: tuple[str, ...] = ("pattern", "attn_scores")
RESID_KINDS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")
# Kinds whose replacement reaches the model's output on TransformerLens 4 bridges. Layer-norm scales
# are rebuilt from hooked values with a warning, and attention scores are read after the wrapped
# module has used them in some bridges, so patching them is refused rather than silently ignored.
PATCHABLE_KINDS: tuple[str, ...] = (
    *(kind for kind in LAYER_KINDS if kind not in ("ln1_scale", "ln2_scale", "attn_scores")),
    "embed",
)


@runtime_checkable
class SiteKind(Protocol):
    """A view of a hook point's activation (see the module docstring).

    Attributes:
        name: the kind's name in Sites and site strings (lowercase letters, digits, ``_``).
        host: the built-in kind it views (``"resid_post"``); the site's layer is the host's layer.
    """

    name: str
    host: str

    def width(self, model: "HookedModel") -> int:
        """The number of units (the size of the view's last axis)."""
        ...

    def layers(self, model: "HookedModel") -> Iterable[int] | None:
        """The layers where the view exists (``None``: every layer of the host kind)."""
        ...

    def read(self, act: Tensor, layer: int | None) -> Float[Tensor, "batch pos width"]:
        """The view of the host activation ``act`` (``[batch, pos, ...]``)."""
        ...

    def write(self, act: Tensor, layer: int | None, value: Float[Tensor, "batch pos width"]) -> Tensor:
        """The host activation with its view replaced by ``value`` (same shape as ``act``)."""
        ...


_session: dict[str, SiteKind] = {}
_installed: dict[str, Entry] | None = None
_clashes: dict[str, tuple[Entry, ...]] = {}
_loaded: dict[str, SiteKind] = {}


def _scan(entry_points: Iterable[EntryPointLike] | None = None) -> dict[str, Entry]:
    global _installed, _clashes
    if _installed is None or entry_points is not None:
        _installed, _clashes = scan(GROUP, entry_points)
        _loaded.clear()
    return _installed


def rescan(entry_points: Iterable[EntryPointLike] | None = None) -> None:
    """Read the entry-point group again (or the given entry points, for tests)."""
    global _installed
    _installed = None
    _scan(entry_points)


def _check_kind(kind: Any, origin: str) -> SiteKind:
    if not isinstance(kind, SiteKind):
        raise SiteError(
            f"{origin} is no SiteKind: it needs name, host, width(model), layers(model), "
            f"read(act, layer) and write(act, layer, value); got {type(kind).__name__}."
        )
    if kind.host not in KINDS:
        raise SiteError(
            f"Site kind {kind.name!r} views {kind.host!r}, which is no built-in kind. Built-in kinds: "
            f"{', '.join(KINDS)}."
        )
    return kind


def register_site_kind(kind: SiteKind) -> SiteKind:
    """Make ``kind`` usable by name in this session; returns it.

    Raises:
        SiteError: the name is a built-in kind, or another kind (in this session or installed)
            already has it. Registering the same object twice is allowed.
    """
    _check_kind(kind, f"The object registered as a site kind ({kind!r})")
    name = kind.name
    if not name.isidentifier() or name != name.lower() or name in KINDS:
        raise SiteError(
            f"Cannot register a site kind named {name!r}: names are lowercase identifiers and the "
            f"built-in kinds ({', '.join(KINDS)}) are taken. Choose another name."
        )
    known = _session.get(name)
    if known is not None and known is not kind:
        raise SiteError(
            f"Two site kinds are named {name!r}: {known!r} and {kind!r} (both registered in this "
            f"session). Unregister the first (unregister_site_kind({name!r})) or rename one."
        )
    entry = _scan().get(name)
    if entry is not None:
        raise SiteError(
            f"Two site kinds are named {name!r}: {entry} (installed) and {kind!r} ({IN_SESSION}). "
            "Rename the one registered in this session."
        )
    _session[name] = kind
    return kind


def unregister_site_kind(name: str) -> None:
    """Forget a kind registered in this session (nothing if there is none)."""
    _session.pop(name, None)


def site_kind(name: str) -> SiteKind | None:
    """The extension kind called ``name``, or ``None`` when no kind has that name.

    Raises:
        SiteError: two installed packages provide the name, or its entry point fails to load.
    """
    if name in _session:
        return _session[name]
    installed = _scan()
    if name in _clashes:
        providers = " and ".join(str(entry) for entry in _clashes[name])
        raise SiteError(f"Two installed packages provide the site kind {name!r}: {providers}. Uninstall one.")
    if name in _loaded:
        return _loaded[name]
    entry = installed.get(name)
    if entry is None:
        return None
    try:
        loaded = entry.loader()
        if not isinstance(loaded, SiteKind) and callable(loaded):
            loaded = loaded()
    except Exception as error:
        raise SiteError(
            f"The site kind {name!r} from {entry} failed to load: {type(error).__name__}: {error}. "
            "Reinstall or fix that package."
        ) from error
    kind = _check_kind(loaded, f"The entry point {name!r} of {entry}")
    if kind.name != name:
        raise SiteError(f"The entry point {name!r} of {entry} builds a kind named {kind.name!r}; rename one.")
    _loaded[name] = kind
    return kind


def site_kind_names() -> list[str]:
    """Every extension kind's name (this session's and installed ones)."""
    return sorted({*_session, *_scan(), *_clashes})
