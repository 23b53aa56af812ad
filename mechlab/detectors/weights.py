"""Attention-head weights with the normalization around them folded in (for weight-based detectors).

A head reads the residual stream through its layer's ``ln1`` and writes back into a stream that
every later reader normalizes again. Weight-based scores (the OV copying score, Q/K/V composition)
should see the matrices the head effectively applies, so:

- the learned scale of ``ln1`` (LayerNorm and RMSNorm) multiplies the rows of ``W_Q``, ``W_K``
  and ``W_V``: ``ln1(x) W = (x / σ) (diag(w) W)`` up to the positive factor ``1 / σ``;
- with LayerNorm (``LN``, ``LNPre``) every reader removes the mean over ``d_model``, so the part of
  ``W_O`` along the all-ones direction is never read: ``W_O`` is centred over ``d_model``.

Biases are left out (they do not depend on the attended token). Under grouped-query attention
``W_K`` and ``W_V`` stay per key/value head (``[layer, kv_head, ...]``); ``kv[h]`` is the key/value
head query head ``h`` reads (``mechlab.kv_head``: Llama's ``repeat_kv`` grouping), and
``per_query_head`` expands them when a computation needs one matrix per query head.
"""

import dataclasses
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.sites import kv_head
from mechlab.types import HookedModel

READS_LN_SCALE = ("LN", "RMS")  # normalizations with a learned scale before the head reads
CENTRES = ("LN", "LNPRE")  # normalizations that remove the mean over d_model


@dataclasses.dataclass(frozen=True, eq=False)
class FoldedHeads:
    """Every head's weights, float32, with normalization folded in (see the module docstring).

    Attributes:
        W_Q: ``[layer, head, d_model, d_head]``, ``ln1`` scale folded.
        W_K: ``[layer, kv_head, d_model, d_head]``, ``ln1`` scale folded.
        W_V: ``[layer, kv_head, d_model, d_head]``, ``ln1`` scale folded.
        W_O: ``[layer, head, d_head, d_model]``, centred over ``d_model`` for LayerNorm models.
        kv: ``[head]``: the key/value head each query head reads.
    """

    W_Q: Float[Tensor, "layer head d_model d_head"]
    W_K: Float[Tensor, "layer kv_head d_model d_head"]
    W_V: Float[Tensor, "layer kv_head d_model d_head"]
    W_O: Float[Tensor, "layer head d_head d_model"]
    kv: Int[Tensor, " head"]

    def per_query_head(
        self, weights: Float[Tensor, "layer kv_head d_model d_head"]
    ) -> Float[Tensor, "layer head d_model d_head"]:
        """``W_K`` or ``W_V`` with one matrix per query head (a new tensor)."""
        return weights.index_select(1, self.kv.to(weights.device))


def normalization(model: HookedModel) -> str:
    """The model's normalization type, upper case (``"LN"``, ``"LNPRE"``, ``"RMS"``, or ``""``)."""
    return str(model.cfg.normalization_type or "").upper()


def centre(weights: Float[Tensor, "*rest d_model"]) -> Float[Tensor, "*rest d_model"]:
    """``weights`` minus their mean over the last (``d_model``) axis: the part LayerNorm reads."""
    return weights - weights.mean(-1, keepdim=True)


def ln1_scales(model: HookedModel) -> Float[Tensor, "layer d_model"]:
    """Each layer's ``ln1`` scale (ones when the normalization has none)."""
    m: Any = model
    if normalization(model) in READS_LN_SCALE:
        return torch.stack([block.ln1.w.detach().float() for block in m.blocks])
    return torch.ones(int(model.cfg.n_layers), int(model.cfg.d_model), device=m.W_Q.device)


def folded_head_weights(model: HookedModel) -> FoldedHeads:
    """Every head's ``W_Q, W_K, W_V, W_O`` with ``ln1`` and LayerNorm centring folded in (no copy of
    the model's parameters is modified)."""
    m: Any = model
    with torch.no_grad():
        scale = ln1_scales(model)[:, None, :, None]
        w_o = m.W_O.detach().float()
        n_heads = int(model.cfg.n_heads)
        kv = torch.tensor([kv_head(model.cfg, head) for head in range(n_heads)], dtype=torch.long)
        w_k, w_v = m.W_K.detach().float(), m.W_V.detach().float()
        n_kv = int(kv.max()) + 1
        if w_k.shape[1] != n_kv:  # one per query head (mechlab.compat): keep each key/value head once
            first = torch.tensor([int((kv == k).nonzero()[0]) for k in range(n_kv)])
            w_k, w_v = w_k[:, first], w_v[:, first]
        return FoldedHeads(
            W_Q=m.W_Q.detach().float() * scale,
            W_K=w_k * scale,
            W_V=w_v * scale,
            W_O=centre(w_o) if normalization(model) in CENTRES else w_o.clone(),
            kv=kv,
        )
