"""HookedTransformer's view of a bridge's weights: per-query-head keys and values, zero biases,
``state_dict`` names.

**Processing** (``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``) is
TransformerLens 4's ``TransformerBridge.process_weights``, which follows TransformerLens 2.18's
``HookedTransformer.load_and_process_state_dict`` (checked against 2.18's formulas in
``tests/compat/test_weights.py``):

- ``fold_ln``, LayerNorm: ``W ← diag(w) W`` and ``b ← b + b_ln W`` for every matrix reading the
  norm (``W_Q``, ``W_K``, ``W_V``; ``W_in``, ``W_gate``; ``W_U``), then those matrices are centred
  over ``d_model``; the norm keeps only its centring and scaling (weight 1, bias 0).
- ``fold_ln``, RMSNorm: ``W ← diag(w) W`` only. RMSNorm has no bias and does not centre, so nothing
  is centred (2.18 calls ``fold_layer_norm(fold_biases=False, center_weights=False)``).
- ``center_writing_weights``: ``W_E``, ``W_pos``, ``W_O``, ``b_O``, ``W_out``, ``b_out`` lose their
  mean over ``d_model`` — **LayerNorm only**: 2.18 skips it, with a warning, for RMSNorm models (whose
  norms do not remove the mean) and for a final RMSNorm.
- ``center_unembed``: ``W_U`` and ``b_U`` lose their mean over the vocabulary, for every norm; this
  shifts every logit at a position by the same amount (log-probabilities are unchanged). Skipped
  with logit soft-capping, as in 2.18.
- ``fold_value_biases``: ``b_O ← b_O + Σ_h b_V[h] W_O[h]``, ``b_V ← 0``.

**Grouped-query attention.** HookedTransformer's ``GroupedQueryAttention`` stores one key/value
projection per key/value head (``_W_K``, ``_W_V``, ``_b_K``, ``_b_V``) and exposes ``W_K``, ``W_V``,
``b_K``, ``b_V`` repeated per query head (``repeat_interleave``: query head ``h`` reads key/value
head ``h // (n_heads / n_key_value_heads)``, Llama's grouping). ``ht_components`` gives a bridge's
attention the same two views. Its ``hook_k``/``hook_v`` stay per key/value head, as in 2.18.
"""

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.errors import MSG_COMPAT_BIAS_ABSENT, CompatError


def expand_kv(weights: Float[Tensor, "kv_head ..."], n_heads: int) -> Float[Tensor, "head ..."]:
    """Key/value weights repeated per query head (no-op when already one per query head).

    >>> expand_kv(torch.tensor([[1.0], [2.0]]), 4).flatten().tolist()
    [1.0, 1.0, 2.0, 2.0]
    """
    groups, rest = divmod(n_heads, int(weights.shape[0]))
    if rest:
        raise ValueError(f"{n_heads} query heads cannot share {weights.shape[0]} key/value heads evenly.")
    return weights if groups == 1 else weights.repeat_interleave(groups, dim=0)


def _base(component: Any, mixin: type, name: str) -> Any:
    """``component.name`` as its class without ``mixin`` resolves it; ``None`` when it has none.

    A bridge component answers ``name`` with a property of its class, or through a property alias
    (``b_in`` → ``in.bias``) that TransformerLens copies onto the instance; the alias path is walked
    afresh here, as the instance copy is hidden behind the mixin's property (and would go stale when
    processing replaces a parameter).
    """
    try:
        return getattr(super(mixin, component), name)
    except AttributeError:
        pass
    aliases = {
        **getattr(type(component), "property_aliases", {}),
        **getattr(component, "_property_alias_registry", {}),
    }
    if name in aliases:
        target = component
        try:
            for part in aliases[name].split("."):
                target = getattr(target, part)
        except AttributeError:
            return None
        return target
    try:
        return type(component).__getattr__(component, name)
    except AttributeError:
        return None


class GroupedAttention:
    """Mixin for a bridge attention component: HookedTransformer's attention weights.

    ``W_K``/``W_V``/``b_K``/``b_V`` one per query head; ``_W_K``/``_W_V``/``_b_K``/``_b_V`` one per
    key/value head; biases the checkpoint lacks are zeros (HookedTransformer fills them so).
    """

    config: Any

    def _inherited(self, name: str) -> Any:
        return _base(self, GroupedAttention, name)

    @property
    def _W_K(self) -> Tensor:
        return self._inherited("W_K")

    @property
    def _W_V(self) -> Tensor:
        return self._inherited("W_V")

    @property
    def _b_K(self) -> Tensor:
        return _bias(self._inherited("b_K"), self._W_K)

    @property
    def _b_V(self) -> Tensor:
        return _bias(self._inherited("b_V"), self._W_V)

    @property
    def W_K(self) -> Tensor:
        return expand_kv(self._W_K, int(self.config.n_heads))

    @property
    def W_V(self) -> Tensor:
        return expand_kv(self._W_V, int(self.config.n_heads))

    @property
    def b_K(self) -> Tensor:
        return expand_kv(self._b_K, int(self.config.n_heads))

    @property
    def b_V(self) -> Tensor:
        return expand_kv(self._b_V, int(self.config.n_heads))

    @property
    def b_Q(self) -> Tensor:
        return _bias(self._inherited("b_Q"), self._inherited("W_Q"))

    @property
    def b_O(self) -> Tensor:
        bias = self._inherited("b_O")
        if bias is not None:
            return bias
        w_o = self._inherited("W_O")
        return _zeros(w_o, int(w_o.shape[-1]))


class ZeroBiasMLP:
    """Mixin for a bridge MLP component: ``b_in``/``b_out`` are zeros when the checkpoint has none."""

    @property
    def b_in(self) -> Tensor:
        w_in = _base(self, ZeroBiasMLP, "W_in")
        bias = _base(self, ZeroBiasMLP, "b_in")
        return bias if bias is not None else _zeros(w_in, int(w_in.shape[-1]))

    @property
    def b_out(self) -> Tensor:
        w_out = _base(self, ZeroBiasMLP, "W_out")
        bias = _base(self, ZeroBiasMLP, "b_out")
        return bias if bias is not None else _zeros(w_out, int(w_out.shape[-1]))


def _zeros(reference: Tensor, *shape: int) -> Tensor:
    return torch.zeros(*shape, device=reference.device, dtype=reference.dtype)


def _bias(bias: Tensor | None, weights: Float[Tensor, "head d_model d_head"]) -> Tensor:
    """``bias``, or HookedTransformer's zero bias ``[head, d_head]`` for ``weights``."""
    return bias if bias is not None else _zeros(weights, int(weights.shape[0]), int(weights.shape[-1]))


_VIEWS: dict[tuple[type, type], type] = {}


def _with_mixin(component: Any, mixin: type) -> None:
    """Give ``component`` (one object) ``mixin``'s properties by making its class a subclass that
    adds them; other instances of the class are untouched."""
    base = type(component)
    if issubclass(base, mixin):
        return
    view = _VIEWS.get((mixin, base))
    if view is None:
        view = type(base.__name__, (mixin, base), {"__module__": base.__module__})
        _VIEWS[(mixin, base)] = view
    component.__class__ = view


def ht_components(model: Any) -> None:
    """Give every block's attention and MLP HookedTransformer's weight views (see the mixins)."""
    for block in model.blocks:
        if "attn" in block._modules:
            _with_mixin(block.attn, GroupedAttention)
        if "mlp" in block._modules:
            _with_mixin(block.mlp, ZeroBiasMLP)


def _grouped(cfg: Any) -> bool:
    n_kv = getattr(cfg, "n_key_value_heads", None)
    return n_kv is not None and int(n_kv) != int(cfg.n_heads)


def ht_state_dict(model: Any, *, folded: bool) -> dict[str, Tensor]:
    """The model's weights under HookedTransformer's names and shapes (the live tensors: views of the
    bridge's parameters where a view exists).

    Grouped-query models give ``attn._W_K``/``_W_V``/``_b_K``/``_b_V`` (as 2.18 stores them); others
    ``attn.W_K``… Norm parameters appear only when not ``folded`` (2.18's folded norms have none);
    ``W_pos`` only for learned absolute positions.
    """
    cfg = model.cfg
    kv = "_" if _grouped(cfg) else ""
    out: dict[str, Tensor] = {"embed.W_E": model.embed.W_E}
    if getattr(cfg, "positional_embedding_type", "standard") in ("standard", "shortformer"):
        out["pos_embed.W_pos"] = model.W_pos
    for layer, block in enumerate(model.blocks):
        prefix = f"blocks.{layer}"
        if not folded:
            out.update(_norm_params(f"{prefix}.ln1", block.ln1))
        attn = block.attn
        out.update(
            {
                f"{prefix}.attn.W_Q": attn.W_Q,
                f"{prefix}.attn.{kv}W_K": attn._W_K,
                f"{prefix}.attn.{kv}W_V": attn._W_V,
                f"{prefix}.attn.W_O": attn.W_O,
                f"{prefix}.attn.b_Q": attn.b_Q,
                f"{prefix}.attn.{kv}b_K": attn._b_K,
                f"{prefix}.attn.{kv}b_V": attn._b_V,
                f"{prefix}.attn.b_O": attn.b_O,
            }
        )
        if "mlp" not in block._modules or getattr(cfg, "attn_only", False):
            continue
        if not folded:
            out.update(_norm_params(f"{prefix}.ln2", block.ln2))
        mlp = block.mlp
        out[f"{prefix}.mlp.W_in"] = mlp.W_in
        if getattr(cfg, "gated_mlp", False):
            out[f"{prefix}.mlp.W_gate"] = mlp.W_gate
        out.update({f"{prefix}.mlp.W_out": mlp.W_out, f"{prefix}.mlp.b_in": mlp.b_in})
        out[f"{prefix}.mlp.b_out"] = mlp.b_out
    if not folded:
        out.update(_norm_params("ln_final", model.ln_final))
    out["unembed.W_U"] = model.W_U
    out["unembed.b_U"] = model.b_U
    return out


def _norm_params(prefix: str, norm: Any) -> dict[str, Tensor]:
    out = {}
    for short, attr in (("w", "weight"), ("b", "bias")):
        value = getattr(norm, attr, None)
        if isinstance(value, Tensor):
            out[f"{prefix}.{short}"] = value
    return out


def to_bridge_state_dict(model: Any, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A HookedTransformer-named state dict as the bridge's own ``load_state_dict`` takes it.

    Norm parameters a folded state dict leaves out keep the model's current values; a zero bias the
    model has no slot for (HookedTransformer's filled-in zeros) is dropped.

    Raises:
        CompatError: a non-zero bias for a projection the model has no bias on.
    """
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    converted = convert_tl_checkpoint(dict(state_dict), model.cfg)
    own = model.bridge_state_dict()
    for key, value in list(converted.items()):
        if key in own:
            continue
        if key.endswith(".bias") and not torch.any(value != 0):
            del converted[key]
            continue
        if key.endswith(".bias"):
            raise CompatError(MSG_COMPAT_BIAS_ABSENT.format(key=key))
    for key, value in own.items():
        if key not in converted and (".ln" in key or key.startswith("ln_final")):
            converted[key] = value
    return converted
