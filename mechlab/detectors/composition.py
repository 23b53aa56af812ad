"""Composition scores: how much a later head reads what an earlier head writes (from the weights).

Elhage et al. (2021) measure whether head B composes with an earlier head A by how much A's OV
circuit output lands in the subspace B reads with its queries (Q-composition), keys
(K-composition) or values (V-composition):

    score = ||W_OV^A · W^B|| / (||W_OV^A|| · ||W^B||)     (Frobenius norms)

with ``W^B = W_QK^B`` (Q), ``(W_QK^B)ᵀ`` (K) or ``W_OV^B`` (V), in TransformerLens' row-vector
convention (``W_OV = W_V W_O``, ``W_QK = W_Q W_Kᵀ``). An induction head K-composes with a
previous-token head: its keys read "the token before was A". Scores of unrelated random matrices of
the same shapes (``composition_baseline``) are the reference: roughly ``1/sqrt(d_model)`` scale.

Normalization is folded in as for every weight-based score (``mechlab.detectors.weights``): the
``ln1`` scale into the matrices that read the residual stream, LayerNorm's centring into ``W_O``;
query heads use their key/value head's weights under grouped-query attention.
"""

from typing import Literal, TypeAlias, get_args

import torch
from transformer_lens import FactoredMatrix

from mechlab.detectors.weights import FoldedHeads, folded_head_weights
from mechlab.errors import InputError
from mechlab.sites import Site, validate
from mechlab.types import HookedModel

CompositionKind: TypeAlias = Literal["q", "k", "v"]


def head_ov(heads: FoldedHeads, layer: int, head: int) -> FactoredMatrix:
    """``W_V W_O`` of one head (``[d_model, d_model]``, factored through ``d_head``)."""
    return FactoredMatrix(heads.W_V[layer, int(heads.kv[head])], heads.W_O[layer, head])


def head_qk(heads: FoldedHeads, layer: int, head: int) -> FactoredMatrix:
    """``W_Q W_Kᵀ`` of one head (``[d_model, d_model]``, factored through ``d_head``)."""
    return FactoredMatrix(heads.W_Q[layer, head], heads.W_K[layer, int(heads.kv[head])].T)


def _score(first: FactoredMatrix, second: FactoredMatrix) -> float:
    return float((first @ second).norm() / (first.norm() * second.norm()))


def composition(
    heads: FoldedHeads, src: tuple[int, int], dst: tuple[int, int], kind: CompositionKind
) -> float:
    """The composition score of ``dst`` reading ``src`` from folded weights (no checks; see
    ``composition_score``)."""
    ov = head_ov(heads, *src)
    if kind == "v":
        return _score(ov, head_ov(heads, *dst))
    qk = head_qk(heads, *dst)
    return _score(ov, qk if kind == "q" else qk.T)


def composition_score(
    model: HookedModel, src: tuple[int, int], dst: tuple[int, int], kind: CompositionKind = "k"
) -> float:
    """How much head ``dst = (layer, head)`` reads the output of the earlier head ``src``.

    Args:
        model: a HookedTransformer-protocol model.
        src: ``(layer, head)`` of the writing head.
        dst: ``(layer, head)`` of the reading head, in a later layer.
        kind: ``"q"``, ``"k"`` or ``"v"``: which input of ``dst`` reads ``src``'s output.

    Returns:
        The composition score in ``[0, 1]``.
    """
    if kind not in get_args(CompositionKind):
        raise InputError(f"kind must be one of {get_args(CompositionKind)}; got {kind!r}.")
    for layer, head in (src, dst):
        validate(Site("z", layer, head), model)
    if not src[0] < dst[0]:
        raise InputError(
            f"Head {dst[0]}.{dst[1]} can only read heads of earlier layers; {src[0]}.{src[1]} is not earlier."
        )
    return composition(folded_head_weights(model), src, dst, kind)


def composition_baseline(model: HookedModel, *, n_draws: int = 64, seed: int = 0) -> float:
    """Mean composition score of random Gaussian matrices with the model's shapes (the chance level)."""
    d_model, d_head = int(model.cfg.d_model), int(model.cfg.d_head)
    generator = torch.Generator().manual_seed(seed)

    def random_factored() -> FactoredMatrix:
        left = torch.randn(d_model, d_head, generator=generator)
        return FactoredMatrix(left, torch.randn(d_head, d_model, generator=generator))

    return sum(_score(random_factored(), random_factored()) for _ in range(n_draws)) / n_draws
