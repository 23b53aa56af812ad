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
folded in up to positive scale factors: LayerNorm's centring and the learned
scales of ``ln1`` (before ``W_V``) and ``ln_final`` (before ``W_U``). With grouped-query attention
each query head reads the value weights of its key/value head (query head ``h`` uses key/value head
``h // (n_heads / n_kv_heads)``, the grouping of Llama's ``repeat_kv``).

The baseline shuffles token identity: the same computation with the unembedding's token order
permuted against the embedding's (on a random subset of the vocabulary), i.e. the score of a head
whose output has no relation to its input token.
"""

from typing import Any, ClassVar, final

import einops
import torch
from jaxtyping import Complex, Float
from torch import Tensor

from mechlab.detectors.base import WeightDetector
from mechlab.types import HeadScores, HookedModel

NULL_TOKENS = 4096


def ov_eigenvalues(
    w_o: Float[Tensor, "layer head d_head d_model"],
    read: Float[Tensor, "d_model_out d_model_in"],
    w_v: Float[Tensor, "layer head d_model d_head"],
) -> Complex[Tensor, "layer head d_head"]:
    """Non-zero eigenvalues of every head's full OV circuit, via ``W_O · read · W_V``.

    ``read`` is ``W_U W_E`` (``[d_model, d_model]``): unembedding after embedding.
    """
    circuit = einops.einsum(
        w_o,
        read,
        w_v,
        "layer head d_head_out d_model_out, d_model_out d_model_in, "
        "layer head d_model_in d_head_in -> layer head d_head_out d_head_in",
    )
    return torch.linalg.eigvals(circuit)


def copying_score(eigenvalues: Complex[Tensor, "*heads n"]) -> Float[Tensor, "*heads"]:
    """``Re(sum λ) / sum |λ|``: +1 when every eigenvalue is positive real, −1 when all negative."""
    total = eigenvalues.sum(-1).real
    return total / eigenvalues.abs().sum(-1).clamp(min=torch.finfo(total.dtype).tiny)


def _centre(weights: Tensor) -> Tensor:
    return weights - weights.mean(-1, keepdim=True)


def _folded_weights(model: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(W_O, W_V per query head, W_E, W_U)`` with normalization folded in, float32."""
    cfg = model.cfg
    norm = str(cfg.normalization_type or "").upper()
    w_e = model.W_E.detach().float()
    w_u = model.W_U.detach().float()
    w_o = model.W_O.detach().float()
    w_v = model.W_V.detach().float()
    # Token-independent parts carry no copying: the mean embedding, and the mean unembedding (a
    # logit added to every token changes no probability). Left in, the direction all embeddings
    # share dominates the spectrum and survives any shuffling of tokens.
    w_e = w_e - w_e.mean(0, keepdim=True)
    w_u = w_u - w_u.mean(1, keepdim=True)
    group = int(cfg.n_heads) // w_v.shape[1]
    w_v = w_v.repeat_interleave(group, dim=1)
    if norm in ("LN", "LNPRE"):
        w_e, w_o = _centre(w_e), _centre(w_o)
    if norm in ("LN", "RMS"):
        ln1 = torch.stack([block.ln1.w.detach().float() for block in model.blocks])
        w_v = w_v * ln1[:, None, :, None]
        w_u = w_u * model.ln_final.w.detach().float()[:, None]
    return w_o, w_v, w_e, w_u


@final
class CopyingDetector(WeightDetector):
    name: ClassVar[str] = "copying"
    description: ClassVar[str] = (
        "its OV circuit copies: attending to a token raises that token's logit (eigenvalue "
        "score of W_E W_V W_O W_U, Elhage et al. 2021)"
    )
    threshold: ClassVar[float] = 0.5

    def weight_scores(self, model: HookedModel) -> HeadScores:
        with torch.no_grad():
            w_o, w_v, w_e, w_u = _folded_weights(model)
            return copying_score(ov_eigenvalues(w_o, w_u @ w_e, w_v))

    def null_scores(self, model: HookedModel, *, generator: torch.Generator) -> HeadScores:
        with torch.no_grad():
            w_o, w_v, w_e, w_u = _folded_weights(model)
            vocab = w_e.shape[0]
            subset = torch.randperm(vocab, generator=generator)[: min(vocab, NULL_TOKENS)]
            shuffled = subset[torch.randperm(subset.numel(), generator=generator)]
            read = w_u[:, shuffled.to(w_u.device)] @ w_e[subset.to(w_e.device)]
            return copying_score(ov_eigenvalues(w_o, read, w_v))
