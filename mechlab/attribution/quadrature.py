"""Quadrature rules for path integrals over ``α ∈ [0, 1]`` (Integrated Gradients and its kin).

A rule returns nodes ``α_k`` and weights ``w_k`` (summing to 1) with ``∫_0^1 f ≈ Σ_k w_k f(α_k)``.

``allocate`` spreads a budget of nodes over the cells of a grid in proportion to how much the
integrand's antiderivative changes over each; ``mechlab.attribution.path_integral`` uses it for its
error-controlled ``adaptive`` rule.
"""

from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from mechlab.errors import InputError

Quadrature = Literal["adaptive", "gauss-legendre", "riemann-middle", "riemann-trapezoid"]
QUADRATURES: tuple[str, ...] = get_args(Quadrature)


def gauss_legendre(steps: int) -> tuple[Tensor, Tensor]:
    """Gauss–Legendre nodes and weights on [0, 1]; exact for polynomials of degree ``2·steps − 1``."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return torch.tensor((nodes + 1) / 2), torch.tensor(weights / 2)


def quadrature(steps: int, rule: Quadrature = "gauss-legendre") -> tuple[Tensor, Tensor]:
    """Nodes ``α`` in [0, 1] and weights summing to 1 for a fixed rule (not ``adaptive``).

    >>> alphas, weights = quadrature(3)
    >>> round(float((weights * alphas**4).sum()), 6)  # ∫ α⁴ = 1/5, exact for 3 Gauss nodes
    0.2
    """
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}.")
    if rule == "gauss-legendre":
        return gauss_legendre(steps)
    if rule == "riemann-middle":
        return (torch.arange(steps, dtype=torch.float64) + 0.5) / steps, torch.full((steps,), 1.0 / steps)
    if rule == "riemann-trapezoid":
        if steps < 2:
            raise InputError("riemann-trapezoid needs at least 2 steps (both endpoints).")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, steps, dtype=torch.float64), weights
    raise InputError(f"Unknown fixed quadrature {rule!r}; choose one of {', '.join(QUADRATURES[1:])}.")


def allocate(change: Tensor, steps: int) -> Tensor:
    """Nodes per cell: one each, the rest in proportion to ``change`` (largest remainders first).

    >>> allocate(torch.tensor([0.0, 3.0, 1.0]), 7).tolist()
    [1, 4, 2]
    """
    cells = len(change)
    if steps < cells:
        raise InputError(f"Need at least one node per cell: {steps} steps for {cells} cells.")
    change = change.double().abs()
    extra = steps - cells
    total = float(change.sum())
    share = change / total * extra if total > 0 else torch.full((cells,), extra / cells, dtype=torch.float64)
    counts = 1 + share.floor().long()
    leftover = steps - int(counts.sum())
    if leftover > 0:
        counts[torch.argsort(share - share.floor(), descending=True)[:leftover]] += 1
    return counts
