"""The hooked model every mechlab source returns, and the activation cache it hands out.

``HookedBridge`` is TransformerLens 4's ``TransformerBridge`` with one change: ``run_with_cache``
returns a ``NormAwareCache``. TransformerLens's ``ActivationCache.apply_ln_to_stack`` (and everything
built on it: ``logit_attrs``, ``decompose_resid(apply_ln=True)``, ``stack_head_results(apply_ln=True)``,
``get_full_resid_decomposition(apply_ln=True)``) centres (LayerNorm) and divides by the norm's cached
scale, but never multiplies by the norm's learned weight: it assumes the weight was folded into the
next layer, as HookedTransformer's ``fold_ln`` does. mechlab loads weights as the source has them, so
on SmolLM2 the logit attributions of ``decompose_resid()`` summed to 1.20 for a logit of 15.3.

``NormAwareCache`` multiplies by the weight (``1 + w`` for Gemma-style offset RMSNorm). Once the
weights are folded that weight is 1 and nothing changes; unfolded, the parts of a decomposition now
sum to the model's own logit::

    Σ logit_attrs(decompose_resid(), t) = logit[t] - b_U[t] - b_ln_final · W_U[:, t]

(the last two terms are constants no component writes; SmolLM2 has neither). The norm's bias is left
out of every component, as folding moves it into the next layer's bias.
"""

from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.model_bridge import TransformerBridge


def norm_gain(norm: Any) -> Tensor | None:
    """The vector a norm multiplies its normalized input by (``None`` when it has none)."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, Tensor):
        return None
    return 1.0 + weight if getattr(norm, "uses_weight_offset", False) else weight


class NormAwareCache(ActivationCache):
    """An ``ActivationCache`` whose norm-applying methods include the norm's weight (see the module
    docstring)."""

    def _target_norm(self, layer: int | None, mlp_input: bool) -> Any:
        n_layers = int(self.model.cfg.n_layers)
        if layer is None or layer == -1 or layer == n_layers:
            return getattr(self.model, "ln_final", None)
        block = self.model.blocks[layer]
        return getattr(block, "ln2" if mlp_input else "ln1", None)

    def _gain(self, layer: int | None, mlp_input: bool, like: Tensor) -> Tensor | None:
        gain = norm_gain(self._target_norm(layer, mlp_input))
        return None if gain is None else gain.detach().to(device=like.device, dtype=like.dtype)

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "num_components *batch_and_pos_dims d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "num_components *batch_and_pos_dims_out d_model"]:
        """TransformerLens's ``apply_ln_to_stack``, then times the target norm's weight.

        ``recompute_ln`` at the final layer runs the real ``ln_final`` module, which applies its
        weight (and bias) itself.
        """
        scaled = super().apply_ln_to_stack(
            residual_stack,
            layer,
            mlp_input=mlp_input,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
            recompute_ln=recompute_ln,
        )
        final = layer is None or layer == -1 or layer == int(self.model.cfg.n_layers)
        if recompute_ln and final:
            return scaled
        if self.model.cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre"):
            return scaled
        gain = self._gain(layer, mlp_input, scaled)
        return scaled if gain is None else scaled * gain

    def _stack_neuron_results_apply_ln_projected(
        self,
        layer: int,
        pos_slice: Any,
        neuron_slice: Any,
        project_2d: Tensor,
        mlp_input: bool = False,
    ) -> Tensor:
        """The fused neuron path projects onto ``project_2d`` without building the stack; the
        weight is folded into the projection instead (``(c * w) @ p = c @ (w[:, None] * p)``)."""
        gain = self._gain(layer, mlp_input, project_2d)
        if gain is not None:
            project_2d = gain[:, None] * project_2d
        return super()._stack_neuron_results_apply_ln_projected(
            layer, pos_slice, neuron_slice, project_2d, mlp_input=mlp_input
        )


class HookedBridge(TransformerBridge):
    """``TransformerBridge`` whose ``run_with_cache`` returns a ``NormAwareCache``."""

    cache_class: type[ActivationCache] = NormAwareCache

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        output, cache = super().run_with_cache(*args, **kwargs)
        if isinstance(cache, ActivationCache):
            cache = self.wrap_cache(cache)
        return output, cache

    def wrap_cache(self, cache: ActivationCache) -> ActivationCache:
        """``cache`` as this model's cache class (the same tensors, not copied)."""
        return self.cache_class(cache.cache_dict, self, has_batch_dim=cache.has_batch_dim)


def adopt(bridge: TransformerBridge) -> HookedBridge:
    """Make a bridge built by TransformerLens a ``HookedBridge`` (the same object: its class changes,
    nothing else)."""
    if not isinstance(bridge, HookedBridge):
        bridge.__class__ = HookedBridge
    return bridge  # type: ignore[return-value]
