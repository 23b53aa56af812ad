"""The activation functions that tell SAE architectures apart, and JumpReLU's training gradients.

- **TopK** (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep each token's ``k``
  largest pre-activations (ReLU'd), zero the rest. L0 is ``k`` by construction; no sparsity penalty.
- **JumpReLU** (Rajamanoharan et al. 2024, "Jumping Ahead"): ``z = pre * H(pre - threshold)`` with a
  learned per-latent threshold. The step has zero gradient almost everywhere, so training uses
  straight-through estimators with a rectangle kernel of width ``bandwidth`` (``JumpReLUFn``,
  ``StepFn``): the threshold receives ``-(threshold / bandwidth) * K((pre - threshold) / bandwidth)``
  through the output and ``-(1 / bandwidth) * K(...)`` through the L0 penalty.
- **ReLU** (+ L1 penalty on ``z * ||W_dec||``, "Towards Monosemanticity"): ``z = relu(pre)``.
"""

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def topk(
    pre: Float[Tensor, "... d_sae"], k: int, *, scale: Float[Tensor, " d_sae"] | None = None
) -> Float[Tensor, "... d_sae"]:
    """Keep the ``k`` largest entries of ``pre`` (times ``scale`` if given) on the last axis, ReLU'd."""
    if scale is not None:
        pre = pre * scale
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def topk_sparse(
    pre: Float[Tensor, "rows d_sae"], k: int
) -> tuple[Float[Tensor, "rows k"], Int[Tensor, "rows k"]]:
    """TopK as ``(values, indices)``: each row's ``k`` largest pre-activations, ReLU'd, and where."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.relu(values), indices


def sparse_decode(
    values: Float[Tensor, "rows k"], indices: Int[Tensor, "rows k"], W_dec: Float[Tensor, "d_sae d_out"]
) -> Float[Tensor, "rows d_out"]:
    """``sum_j values[:, j] * W_dec[indices[:, j]]``: the decoder product over the active latents only.

    Equal to ``z @ W_dec`` for the dense ``z`` holding ``values`` at ``indices``, at ``k / d_sae`` of
    its cost, forward and backward (``embedding_bag``; ``W_dec`` receives gradient on active rows).
    """
    return F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")


def jumprelu(
    pre: Float[Tensor, "... d_sae"], threshold: Float[Tensor, " d_sae"]
) -> Float[Tensor, "... d_sae"]:
    """``relu(pre)`` where ``pre > threshold``, else 0 (inference: no straight-through gradient)."""
    return torch.relu(pre) * (pre > threshold).to(pre.dtype)


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_leading(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1]).sum(dim=0)


class JumpReLUFn(torch.autograd.Function):
    """JumpReLU with the paper's pseudo-derivative for the threshold."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_pre = (pre > threshold).to(grad.dtype) * grad
        kernel = _rectangle((pre - threshold) / bandwidth)
        grad_threshold = _sum_leading(-(threshold / bandwidth) * kernel * grad)
        return grad_pre, grad_threshold, None


class StepFn(torch.autograd.Function):
    """``H(pre - threshold)`` with the paper's pseudo-derivative for the threshold (L0 penalty)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        kernel = _rectangle((pre - threshold) / bandwidth)
        return None, _sum_leading(-(1.0 / bandwidth) * kernel * grad), None


def jumprelu_train(
    pre: Float[Tensor, "... d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float
) -> Float[Tensor, "... d_sae"]:
    """JumpReLU whose threshold learns through the straight-through estimator."""
    out: Tensor = JumpReLUFn.apply(pre, threshold, bandwidth)  # type: ignore[no-untyped-call]
    return out


def step_train(
    pre: Float[Tensor, "... d_sae"], threshold: Float[Tensor, " d_sae"], bandwidth: float
) -> Float[Tensor, "... d_sae"]:
    """The L0 indicator ``pre > threshold`` whose threshold learns through the estimator."""
    out: Tensor = StepFn.apply(pre, threshold, bandwidth)  # type: ignore[no-untyped-call]
    return out
