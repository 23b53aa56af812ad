"""The path integral under Integrated Gradients, on the activation at any site.

``path_integral`` computes, elementwise, ``(x - b) · ∫_0^1 ∂F/∂a (b + α (x - b)) dα`` where ``a``
is the activation at a site, ``x`` its value on the prompt and ``b`` a baseline. The hook at the
site replaces the activation with the interpolated one; all nodes of a chunk run as one batch.

Fixed rules spend ``steps`` nodes blindly. ``adaptive`` (the default) controls the error:

1. ``F`` is evaluated (forward passes only) at the ends of ``c`` equal cells. The integral of the
   directional derivative over cell ``i`` is then known exactly: ``ΔF_i = F(α_{i+1}) - F(α_i)``.
2. Each cell gets Gauss–Legendre nodes (one each, the rest by ``|ΔF_i|``); the gradient at the
   nodes gives the cell's estimate ``E_i`` — and with it every token's share.
3. While ``Σ_i |E_i - ΔF_i| > tolerance · |F(x) - F(b)|`` and the budget lasts, the cells with the
   largest error get twice the nodes.

The exact ``ΔF_i`` only steer where nodes go; attributions are never rescaled to match them, so
the reported completeness error remains an honest measure of the quadrature.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from mechlab.attribution.quadrature import Quadrature, allocate, gauss_legendre, quadrature
from mechlab.hooks import hooked, recorder
from mechlab.sites import Site, stop_layer
from mechlab.targets import Target
from mechlab.types import HookedModel, Tokens

PROBE_CELLS = 16


def constant(value: Tensor) -> Callable[[Tensor, Site], Tensor]:
    """A hook that replaces the activation with ``value`` (broadcast over the batch)."""

    def fn(act: Tensor, site: Site) -> Tensor:
        return value.to(act.dtype).expand_as(act)

    return fn


@torch.no_grad()
def activation_at(
    model: HookedModel, tokens: Tokens, site: Site, replace: dict[Site, Tensor] | None = None
) -> Tensor:
    """A copy of the activation at ``site`` on ``tokens`` (optionally with upstream sites replaced).

    The forward pass stops at the block after ``site`` (at the embedding for ``Site("embed")``).
    """
    seen: dict[Site, Tensor] = {}
    spec: list[tuple[Site, Callable[[Tensor, Site], Tensor | None]]] = [
        (s, constant(v)) for s, v in (replace or {}).items()
    ]
    spec.append((site, recorder(seen)))
    stop = stop_layer([site], int(model.cfg.n_layers))
    with hooked(model, spec):
        if stop is None:
            model(tokens)
        else:
            model(tokens, stop_at_layer=stop)
    return seen[site]


def target_value(model: HookedModel, tokens: Tokens, target: Target, replace: dict[Site, Tensor]) -> float:
    """The target on ``tokens`` with the given sites replaced."""
    with torch.no_grad(), hooked(model, {s: constant(v) for s, v in replace.items()}):
        return float(target(model(tokens))[0])


Scalar = Callable[[Tensor], Tensor]
"""A function of a batch of activations ``[n, *act]`` returning one number per row ``[n]``."""


def model_function(model: HookedModel, tokens: Tokens, target: Target, site: Site) -> Scalar:
    """``F(a)``: the target when the activation at ``site`` is replaced by each row of ``a``."""

    def fn(acts: Tensor) -> Tensor:
        with hooked(model, {site: constant(acts)}):
            return target(model(tokens.expand(len(acts), -1)))

    return fn


def _interp(x_act: Tensor, b_act: Tensor, alphas: Tensor) -> Tensor:
    shape = (-1,) + (1,) * (x_act.ndim - 1)
    return b_act + alphas.to(device=x_act.device, dtype=x_act.dtype).view(shape) * (x_act - b_act)


@torch.no_grad()
def path_values(fn: Scalar, x_act: Tensor, b_act: Tensor, alphas: Tensor, batch_size: int) -> Tensor:
    """``F(b + α (x - b))`` at each ``α`` (forward passes only), float64 on the CPU."""
    values = [
        fn(_interp(x_act, b_act, alphas[start : start + batch_size])).double().cpu()
        for start in range(0, len(alphas), batch_size)
    ]
    return torch.cat(values)


def node_gradients(
    fn: Scalar,
    x_act: Tensor,
    b_act: Tensor,
    nodes: tuple[Tensor, Tensor, Tensor],
    n_groups: int,
    batch_size: int,
) -> Tensor:
    """``Σ_k w_k ∂F/∂a`` at nodes ``(alphas, weights, group)``, summed per group: ``[n_groups, *act]``."""
    alphas, weights, groups = nodes
    sums = torch.zeros((n_groups, *x_act.shape[1:]), dtype=torch.float64, device=x_act.device)
    for start in range(0, len(alphas), batch_size):
        chunk = slice(start, start + batch_size)
        interp = _interp(x_act, b_act, alphas[chunk]).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(fn(interp).sum(), interp)
        w = weights[chunk].to(device=x_act.device, dtype=torch.float64).view((-1,) + (1,) * (x_act.ndim - 1))
        sums.index_add_(0, groups[chunk].to(x_act.device), w * grad.double())
    return sums


def _cell_nodes(cells: list[int], counts: Tensor, n_cells: int) -> tuple[Tensor, Tensor, Tensor]:
    alphas, weights, groups = [], [], []
    for cell in cells:
        nodes, w = gauss_legendre(int(counts[cell]))
        alphas.append((cell + nodes) / n_cells)
        weights.append(w / n_cells)
        groups.append(torch.full((len(nodes),), cell, dtype=torch.long))
    return torch.cat(alphas), torch.cat(weights), torch.cat(groups)


def _refine(errors: Tensor, counts: Tensor, room: int, batch_size: int) -> list[int]:
    """Cells whose node count doubles next: largest error first, about one batch of new nodes."""
    chosen, new = [], 0
    for cell in torch.argsort(errors, descending=True).tolist():
        extra = 2 * int(counts[cell])
        if errors[cell] <= 0 or new + extra > room:
            continue
        chosen.append(cell)
        new += extra
        if new >= batch_size:
            break
    return chosen


def adaptive_integral(
    fn: Scalar,
    x_act: Tensor,
    b_act: Tensor,
    *,
    steps: int,
    batch_size: int,
    tolerance: float,
    ends: tuple[float, float] | None = None,
) -> tuple[Tensor, int, str]:
    """The error-controlled integral (see the module doc): ``(Σ_k w_k ∂F/∂a, nodes used, note)``.

    ``ends`` are ``(F(b), F(x))`` if the caller has them; then only interior points are probed.
    """
    n_cells = max(1, min(PROBE_CELLS, steps // 2))
    grid = torch.linspace(0, 1, n_cells + 1, dtype=torch.float64)
    if ends is None:
        values = path_values(fn, x_act, b_act, grid, batch_size)
    else:
        inner = path_values(fn, x_act, b_act, grid[1:-1], batch_size)
        values = torch.cat([torch.tensor([ends[0]]), inner, torch.tensor([ends[1]])]).double()
    exact = values[1:] - values[:-1]
    gap = float(values[-1] - values[0]) or 1e-12
    direction = (x_act[0] - b_act[0]).double()
    counts = allocate(exact, min(steps, 2 * n_cells))
    sums = torch.zeros((n_cells, *x_act.shape[1:]), dtype=torch.float64, device=x_act.device)
    todo, used = list(range(n_cells)), 0
    while todo:
        cell_sums = node_gradients(fn, x_act, b_act, _cell_nodes(todo, counts, n_cells), n_cells, batch_size)
        sums[todo] = cell_sums[todo]
        used += int(counts[todo].sum())
        estimate = (sums * direction).flatten(1).sum(-1).cpu()
        errors = (estimate - exact).abs()
        if float(errors.sum()) <= tolerance * abs(gap):
            break
        todo = _refine(errors, counts, steps - used, batch_size)
        counts[todo] *= 2
    cell_error = float(errors.sum()) / abs(gap)
    note = (
        f"adaptive Gauss–Legendre on {n_cells} cells: F probed at {n_cells + 1} points (forward only), "
        f"{used} gradient evaluations (budget {steps}); Σ|cell error| = {cell_error:.2%} of "
        "|F(x) − F(baseline)|"
    )
    return sums.sum(0), used, note


def path_integral(
    fn: Scalar,
    x_act: Tensor,
    b_act: Tensor,
    *,
    steps: int,
    batch_size: int,
    rule: Quadrature,
    tolerance: float,
    ends: tuple[float, float] | None = None,
) -> tuple[Tensor, int, str]:
    """``((x - b) · ∫ ∂F/∂a dα`` elementwise ``[*act]``, gradient evaluations, a note on the rule).

    ``x_act`` and ``b_act`` are ``[1, *act]``; ``fn`` maps ``[n, *act]`` to ``[n]``; ``ends``
    optionally gives ``(F(b), F(x))`` (the adaptive rule then skips probing them).

    >>> relu = torch.relu  # Sundararajan et al.'s example: F = relu(relu(x1) - 1 - relu(x2))
    >>> fn = lambda a: relu(relu(a[:, 0]) - 1 - relu(a[:, 1]))
    >>> ig, _, _ = path_integral(fn, torch.tensor([[3.0, 1.0]]), torch.zeros(1, 2), steps=32,
    ...                          batch_size=16, rule="adaptive", tolerance=1e-6)
    >>> [round(v, 4) for v in ig.tolist()]
    [1.5, -0.5]
    """
    if rule == "adaptive":
        grad, used, note = adaptive_integral(
            fn, x_act, b_act, steps=steps, batch_size=batch_size, tolerance=tolerance, ends=ends
        )
    else:
        alphas, weights = quadrature(steps, rule)
        nodes = (alphas, weights, torch.zeros(len(alphas), dtype=torch.long))
        grad = node_gradients(fn, x_act, b_act, nodes, 1, batch_size)[0]
        used, note = steps, f"{rule} quadrature, {steps} gradient evaluations"
    return grad * (x_act[0] - b_act[0]).double(), used, f"{note}; {batch_size} per pass."
