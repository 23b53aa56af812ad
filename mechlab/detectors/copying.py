"""The copying detector: does a head's OV circuit copy the token it attends to?

Elhage et al. (2021, "A Mathematical Framework for Transformer Circuits") read this from the weights.
The full OV circuit of a head maps an attended token to output logits,
``W_E W_V W_O W_U`` (``[d_vocab, d_vocab]``). A head that copies raises the logit of the token it
attends to, so that matrix has mostly positive eigenvalues; its copying score is
``sum(λ) / sum(|λ|)`` over the eigenvalues: +1 for pure copying, 0 for no relation, −1 for
anti-copying (suppression). The non-zero eigenvalues of ``W_E W_V W_O W_U`` equal those of
``W_O W_U W_E W_V`` (``[d_head, d_head]``), which is what is computed: exact and cheap even for a
49k-token vocabulary.

Token-independent parts are removed first: the mean embedding and the mean unembedding (adding
the same logit to every token changes no probability). Left in, the one direction all embeddings
share dominates the spectrum of a large model and survives any shuffling of tokens. Normalization is
folded in up to positive scale factors (``mechlab.detectors.weights``): LayerNorm's centring and
the learned scales of ``ln1`` (before ``W_V``) and ``ln_final`` (before ``W_U``). With grouped-query
attention each query head reads the value weights of its key/value head; ``W_U W_E W_V`` is formed
once per key/value head and then shared by its query heads.

The null shuffles token identity: the same computation with the unembedding's token order permuted
against the embedding's over the whole vocabulary (the same tokens the score uses), i.e. the score
of a head whose output has no relation to its input token. A head's exact score beats chance when
it exceeds the 97.5% prediction bound of the null draws (``mechlab.detectors.result``).
"""

from typing import Any, ClassVar, final

import einops
import torch
from jaxtyping import Complex, Float, Int
from torch import Tensor

from mechlab.detectors.base import NullScores, WeightDetector
from mechlab.detectors.weights import CENTRES, centre, folded_head_weights, normalization
from mechlab.types import HeadScores, HookedModel


def ov_eigenvalues(
    w_o: Float[Tensor, "layer head d_head d_model"],
    read: Float[Tensor, "d_model_out d_model_in"],
    w_v: Float[Tensor, "layer kv_head d_model d_head"],
    kv: Int[Tensor, " head"] | None = None,
) -> Complex[Tensor, "layer head d_head"]:
    """Non-zero eigenvalues of every head's full OV circuit, via ``W_O · read · W_V``.

    Args:
        w_o: output weights of every query head.
        read: ``W_U W_E`` (``[d_model, d_model]``): unembedding after embedding.
        w_v: value weights of every key/value head.
        kv: the key/value head of each query head; ``None`` when there is one per query head.
    """
    read_v = einops.einsum(
        read,
        w_v,
        "d_model_out d_model_in, layer kv_head d_model_in d_head -> layer kv_head d_model_out d_head",
    )
    if kv is not None:
        read_v = read_v.index_select(1, kv.to(read_v.device))
    # float64: LAPACK's float32 solver is more than 10x slower on these small matrices (measured:
    # 270 heads of 64 x 64, 11-22 s in float32 against 0.7 s in float64 on 2 cores).
    return torch.linalg.eigvals((w_o @ read_v).double())


def copying_score(eigenvalues: Complex[Tensor, "*heads n"]) -> Float[Tensor, "*heads"]:
    """``Re(sum λ) / sum |λ|``: +1 when every eigenvalue is positive real, −1 when all negative."""
    total = eigenvalues.sum(-1).real
    return total / eigenvalues.abs().sum(-1).clamp(min=torch.finfo(total.dtype).tiny)


def folded_vocab(
    model: HookedModel,
) -> tuple[Float[Tensor, "d_vocab d_model"], Float[Tensor, "d_model d_vocab"]]:
    """``(W_E, W_U)`` without their token-independent parts, normalization folded in, float32."""
    m: Any = model
    with torch.no_grad():
        w_e = m.W_E.detach().float()
        w_u = m.W_U.detach().float()
        # The mean embedding, and the mean unembedding (a logit added to every token changes no
        # probability), carry no copying. Left in, the direction all embeddings share dominates
        # the spectrum and survives any shuffling of tokens.
        w_e = w_e - w_e.mean(0, keepdim=True)
        w_u = w_u - w_u.mean(1, keepdim=True)
        norm = normalization(model)
        if norm in CENTRES:
            w_e = centre(w_e)
        if norm in ("LN", "RMS"):
            w_u = w_u * m.ln_final.w.detach().float()[:, None]
        return w_e, w_u


@final
class CopyingDetector(WeightDetector):
    name: ClassVar[str] = "copying"
    description: ClassVar[str] = (
        "its OV circuit copies: attending to a token raises that token's logit (eigenvalue "
        "score of W_E W_V W_O W_U, Elhage et al. 2021)"
    )
    threshold: ClassVar[float] = 0.5

    def weight_scores(self, model: HookedModel) -> HeadScores:
        heads = folded_head_weights(model)
        w_e, w_u = folded_vocab(model)
        with torch.no_grad():
            return copying_score(ov_eigenvalues(heads.W_O, w_u @ w_e, heads.W_V, heads.kv))

    def null_scores(self, model: HookedModel, *, generator: torch.Generator, n_draws: int) -> NullScores:
        heads = folded_head_weights(model)
        w_e, w_u = folded_vocab(model)
        draws = []
        with torch.no_grad():
            for _ in range(n_draws):
                shuffled = torch.randperm(w_e.shape[0], generator=generator).to(w_u.device)
                read = w_u[:, shuffled] @ w_e
                draws.append(copying_score(ov_eigenvalues(heads.W_O, read, heads.W_V, heads.kv)))
        return torch.stack(draws)
