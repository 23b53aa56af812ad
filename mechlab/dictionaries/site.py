"""An SAE's latents as a site kind: capture, patch, ablate, clamp, attribute and steer latents.

``attach_sae(model, sae, name="res6")`` registers one site kind (``mechlab.site_kinds``) that views
the hook point the SAE reads (its ``cfg.site``, e.g. ``resid_post.6``). A site of the kind is
``Site("res6", 6)`` (all latents, ``[batch, pos, d_sae]``) or ``Site("res6", 6, 123)`` (latent 123),
written ``"res6.6.123"`` on the command line; everything that goes through ``mechlab.hooked`` takes
it: ``capture``, ``patch``, ``zero_ablation``, ``attribution_patch``, ``steer``.

Reading a site encodes the host activation ``x`` into latents ``z = encode(x)``. Writing edited
latents ``z'`` back keeps the SAE's error term::

    x' = x + decode(z') − decode(z)      (= decode(z') + (x − decode(z)))

so the rest of the model sees the true activation when nothing is edited (``z' = z`` gives ``x``
exactly), and an edit changes ``x`` only along the edited latents' decoder rows. Gradients reach
the latents through ``decode``, so attribution patching over latents is activation difference ×
``∂metric/∂z = W_dec · ∂metric/∂x``. Steering a latent adds multiples of its decoder row.

A head-split host (``z``, ``q``, ``k``, ``v``: ``[batch, pos, head, d_head]``) is flattened to
``[batch, pos, head·d_head]`` for the SAE, as SAELens's ``hook_z`` SAEs read it.
"""

import copy
import dataclasses
import re
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.activations import site_numel
from mechlab.dictionaries.sae import SAE
from mechlab.errors import InputError, SiteError
from mechlab.hooks import SiteHook
from mechlab.site_kinds import KINDS, PATTERN_KINDS, register_site_kind, site_kind, unregister_site_kind
from mechlab.sites import Site, validate
from mechlab.types import HookedModel

# Host kinds an SAE can read: vector activations (scales and attention patterns are not).
SAE_HOSTS: tuple[str, ...] = tuple(k for k in KINDS if k not in PATTERN_KINDS and not k.endswith("scale"))


@dataclasses.dataclass(eq=False)
class SAESite:
    """The site kind of one SAE's latents (a ``mechlab.SiteKind``); made by ``attach_sae``.

    Attributes:
        name: the kind's name in sites (``"res6"`` → ``Site("res6", 6, 123)``).
        sae: the SAE (on the model's device).
        host: the hook-point kind it reads (``"resid_post"``).
        layer: the host's layer (``None`` for global hosts such as ``embed``).
    """

    name: str
    sae: SAE
    host: str
    layer: int | None
    _last: tuple[Any, int, Tensor] | None = dataclasses.field(default=None, repr=False)

    def width(self, model: object) -> int:
        return int(self.sae.cfg.d_sae)

    def layers(self, model: object) -> tuple[int, ...] | None:
        return None if self.layer is None else (self.layer,)

    def _flat(self, act: Tensor) -> Float[Tensor, "batch pos d_in"]:
        flat = act.flatten(2) if act.ndim > 3 else act
        if flat.shape[-1] != self.sae.cfg.d_in:
            raise SiteError(
                f"The SAE of site kind {self.name!r} reads {self.sae.cfg.d_in}-wide activations at "
                f"{self.sae.cfg.site}, but the hooked activation has shape {tuple(act.shape)}. Attach it "
                "to the model it was trained on."
            )
        return flat

    def _encode(self, act: Tensor) -> Float[Tensor, "batch pos d_sae"]:
        """``encode`` of the host activation. Outside autograd the last result is reused when
        ``write`` gets the activation ``read`` just saw (same object, unchanged), saving an encoding
        per hook call; with gradients ``write`` encodes again, so the latents it is handed and the
        ones it subtracts are separate nodes and ``∂x'/∂x`` stays the identity."""
        tracked = torch.is_grad_enabled() and act.requires_grad
        last = self._last
        if not tracked and last is not None and last[0]() is act and last[1] == act._version:
            return last[2]
        latents = self.sae.encode(self._flat(act))
        self._last = None if tracked else (weakref.ref(act), act._version, latents)
        return latents

    def read(self, act: Tensor, layer: int | None) -> Float[Tensor, "batch pos d_sae"]:
        return self._encode(act)

    def write(self, act: Tensor, layer: int | None, value: Float[Tensor, "batch pos d_sae"]) -> Tensor:
        x = self._flat(act)
        old = self._encode(act)
        self._last = None  # the encoding served this write; do not keep it alive
        if not (torch.is_grad_enabled() and (act.requires_grad or value.requires_grad)):
            if value is old or torch.equal(value, old):  # nothing edited: the activation as it was
                return act
        # decode(value) − decode(old) = decode(value − old) − decode(0): decode is affine in the
        # latents for a given input, so one decoder product serves instead of two.
        zero = value.new_zeros(value.shape[-1])
        delta = self.sae.decode(value - old, like=x) - self.sae.decode(zero, like=x)
        return act + delta.reshape(act.shape).to(act.dtype)

    def site(self, latent: int | None = None, *, pos: int | None = None) -> Site:
        """The site of all latents, or of one ``latent`` (optionally at one position)."""
        return Site(self.name, self.layer, latent, pos)

    def unit_vector(self, latent: int) -> Float[Tensor, " d_sae"]:
        """The one-hot latent direction: ``steer(model, tokens, kind.site(), kind.unit_vector(i), …)``
        adds multiples of latent ``i``'s decoder row at the host."""
        self._check_latent(latent)
        vector = torch.zeros(self.sae.cfg.d_sae, device=self.sae.device)
        vector[latent] = 1.0
        return vector

    def decoder_direction(self, latent: int) -> Float[Tensor, " d_in"]:
        """What adding 1 to ``latent`` adds to the host activation (its decoder row, in model units)."""
        self._check_latent(latent)
        with torch.no_grad():
            zero = torch.zeros(1, self.sae.cfg.d_sae, dtype=self.sae.W_dec.dtype, device=self.sae.device)
            one = zero.clone()
            one[0, latent] = 1.0
            if self.sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
                raise InputError(
                    f"The SAE of {self.name!r} normalizes each input ({self.sae.cfg.normalize_activations}), "
                    "so a latent adds a different vector to each activation; steer through the kind "
                    "(kind.site(), kind.unit_vector(latent)) instead."
                )
            return (self.sae.decode(one) - self.sae.decode(zero))[0]

    def clamp(self, values: Mapping[int, float], *, pos: int | None = None) -> dict[Site, SiteHook]:
        """Hooks for ``mechlab.hooked`` that set each ``latent`` to ``value`` (at every position, or
        at ``pos``), the error term kept: ``with hooked(model, kind.clamp({123: 5.0})): ...``."""
        if not values:
            raise InputError("clamp needs at least one {latent: value}; got none.")
        for latent in values:
            self._check_latent(latent)
        latents = list(values)
        targets = torch.tensor([float(values[i]) for i in latents])

        def set_latents(view: Tensor, site: Site) -> Tensor:
            out = view.clone()
            where = slice(None) if pos is None else pos
            out[:, where, latents] = targets.to(out.device, out.dtype)
            return out

        return {self.site(): set_latents}

    def _check_latent(self, latent: int) -> None:
        d_sae = self.sae.cfg.d_sae
        if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < d_sae:
            raise InputError(
                f"Latent {latent!r} does not exist: the SAE of {self.name!r} has latents 0..{d_sae - 1}."
            )


_NAME = re.compile(r"[^a-z0-9_]+")


def default_name(sae: SAE) -> str:
    """``sae_<host>_<layer>`` (``sae_resid_post_6``), the name ``attach_sae`` gives by default."""
    site = sae.cfg.site_in
    return f"sae_{site.kind}" + ("" if site.layer is None else f"_{site.layer}".replace("-", "m"))


def kind_name(text: str) -> str:
    """``text`` as a site-kind name: lowercase, other characters as ``_``, starting with a letter
    (``"SAE res-6"`` → ``"sae_res_6"``), e.g. from a directory name."""
    name = _NAME.sub("_", text.lower()).strip("_") or "sae"
    return name if name[0].isalpha() else f"sae_{name}"


def attach_sae(model: HookedModel, sae: SAE, *, name: str | None = None) -> SAESite:
    """Register ``sae``'s latents as a site kind of ``model``'s hook point ``sae.cfg.site``.

    Args:
        model: the hooked model the SAE was trained on.
        sae: the SAE. If its parameters are on another device than the model, a copy is moved
            there (the caller's SAE is never changed).
        name: the kind's name (a lowercase identifier; default ``default_name(sae)``).

    Returns:
        the ``SAESite``; ``detach_sae(kind)`` (or ``attached(...)`` as a ``with`` block) removes it.

    Raises:
        InputError: not an SAE, a transcoder, or a site that is not a vector hook point.
        SiteError: the site does not exist in the model, its width is not ``d_in``, or the name is
            taken by another kind.
    """
    if not isinstance(sae, SAE):
        raise InputError(
            f"attach_sae needs a mechlab SAE (mechlab.dictionaries.load_sae); got {type(sae).__name__}."
        )
    cfg = sae.cfg
    if cfg.site_out is not None:
        raise InputError(
            f"This dictionary is a transcoder ({cfg.site} → {cfg.site_out}); its latents do not "
            "reconstruct the site they read, so it is no SAE site kind."
        )
    parsed = cfg.site_in
    if parsed.kind not in SAE_HOSTS or parsed.head is not None or parsed.pos is not None:
        raise InputError(
            f"An SAE site kind views a whole vector hook point; the SAE reads {cfg.site!r}. Valid: one "
            f"of {', '.join(SAE_HOSTS)} with its layer, e.g. 'resid_post.6'."
        )
    site = validate(parsed, model)
    width = site_numel(model, site, 1, 1)
    if width != cfg.d_in:
        raise SiteError(
            f"The SAE reads {cfg.d_in}-wide activations, but {site} of this model is {width} wide. "
            "Attach it to the model it was trained on."
        )
    device = torch.device(model.cfg.device)
    if sae.device != device:
        sae = copy.deepcopy(sae).to(device)
    kind = SAESite(name or default_name(sae), sae, site.kind, site.layer)
    known = site_kind(kind.name)
    if (
        isinstance(known, SAESite)
        and known.sae is sae
        and (known.host, known.layer) == (kind.host, kind.layer)
    ):
        return known  # the same SAE attached twice under one name
    register_site_kind(kind)
    return kind


def detach_sae(kind: SAESite | str) -> None:
    """Unregister an SAE's site kind (by the kind or its name); nothing if it is not registered."""
    unregister_site_kind(kind if isinstance(kind, str) else kind.name)


@contextmanager
def attached(model: HookedModel, sae: SAE, *, name: str | None = None) -> Iterator[SAESite]:
    """``attach_sae`` for the duration of a ``with`` block (detached on exit, also after an error)."""
    chosen = name or default_name(sae)
    registered = site_kind(chosen) is not None  # an earlier attach of the same SAE stays
    kind = attach_sae(model, sae, name=chosen)
    try:
        yield kind
    finally:
        if not registered:
            detach_sae(kind)
