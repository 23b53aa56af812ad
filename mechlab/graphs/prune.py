"""Pruning an attribution graph, and its replacement and completeness scores (circuit-tracer's).

Influence: normalise each row of ``|A|`` to sum to 1 (``normalize_matrix``); a node's influence on
the output is ``w @ (Â + Â² + …)`` with ``w`` the logit probabilities on logit nodes
(``compute_influence``, summed until the series vanishes — the graph is acyclic).

Pruning (``prune_graph``): keep the nodes holding ``node_threshold`` of the cumulative influence
(tokens and logits always), then the edges holding ``edge_threshold`` of the edge influence
(``Â`` times the influence of the edge's target plus its logit weight), then drop feature and error
nodes left without outgoing edges and features without incoming edges, until nothing changes.

Scores (``graph_scores``):

- replacement score: the influence of token nodes over that of tokens plus error nodes — how much
  of the end-to-end path from tokens to logits runs through features rather than errors;
- completeness score: the share of each node's normalised input that comes from non-error nodes,
  weighted by the node's influence plus logit weight.
"""

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechlab.errors import InputError
from mechlab.graphs.graph import AttributionGraph


def normalize_matrix(matrix: Float[Tensor, "rows cols"]) -> Float[Tensor, "rows cols"]:
    """``|matrix|`` with each row scaled to sum to 1 (all-zero rows stay zero)."""
    absolute = matrix.abs()
    return absolute / absolute.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(
    normalized: Float[Tensor, "n n"], logit_weights: Float[Tensor, " n"], max_iter: int = 1000
) -> Float[Tensor, " n"]:
    """``w @ (Â + Â² + …)``; raises when the series does not vanish (a cycle)."""
    current = logit_weights @ normalized
    influence = current.clone()
    for _ in range(max_iter):
        if not bool(current.any()):
            return influence
        current = current @ normalized
        influence += current
    raise InputError(
        f"Influence did not converge in {max_iter} steps: the adjacency matrix has a cycle "
        "(an attribution graph is acyclic; was it built by mechlab.graphs.attribute?)."
    )


def node_influence(graph: AttributionGraph) -> Float[Tensor, " n_nodes"]:
    """Each node's influence on the weighted logits."""
    return compute_influence(normalize_matrix(graph.adjacency), graph.logit_weights())


def edge_influence(pruned: Float[Tensor, "n n"], logit_weights: Float[Tensor, " n"]) -> Float[Tensor, "n n"]:
    """Each edge's influence: its normalised weight times its target's influence plus logit weight."""
    normalized = normalize_matrix(pruned)
    influence = compute_influence(normalized, logit_weights) + logit_weights
    return normalized * influence[:, None]


def find_threshold(scores: Float[Tensor, " n"], threshold: float) -> Tensor:
    """The score above which the largest scores sum to ``threshold`` of the total."""
    ordered = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ordered, dim=0) / ordered.sum().clamp(min=1e-30)
    index = min(
        int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype))), len(ordered) - 1
    )
    return ordered[index]


class PruneResult(NamedTuple):
    """Which nodes and edges survive, and each node's cumulative influence rank (0..1)."""

    node_mask: Bool[Tensor, " n_nodes"]
    edge_mask: Bool[Tensor, "n_nodes n_nodes"]
    cumulative_scores: Float[Tensor, " n_nodes"]


def prune_graph(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneResult:
    """Prune ``graph`` as circuit-tracer does (see the module docstring)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} must be in [0, 1]; got {value}.")
    n_logits, n_tokens, n_features = graph.n_logits, graph.n_pos, graph.n_features
    weights = graph.logit_weights()
    influence = node_influence(graph)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask[-n_logits - n_tokens :] = True
    pruned = graph.adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    scores = edge_influence(pruned, weights)
    edge_mask = scores >= find_threshold(scores.flatten(), edge_threshold)
    edge_mask &= pruned != 0

    inner = slice(0, graph.adjacency.shape[0] - n_logits - n_tokens)
    previous = None
    while previous is None or not torch.equal(previous, node_mask):
        previous = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[inner] &= edge_mask[:, inner].any(0)  # feature and error nodes need an outgoing edge
        node_mask[:n_features] &= edge_mask[:n_features].any(1)  # features need an incoming edge

    ordered, order = torch.sort(influence, descending=True)
    cumulative = torch.zeros_like(influence)
    cumulative[order] = torch.cumsum(ordered, dim=0) / ordered.sum().clamp(min=1e-30)
    return PruneResult(node_mask, edge_mask, cumulative)


def graph_scores(graph: AttributionGraph) -> tuple[float, float]:
    """``(replacement score, completeness score)`` of the unpruned graph (circuit-tracer's
    ``compute_graph_scores``)."""
    weights = graph.logit_weights()
    normalized = normalize_matrix(graph.adjacency)
    influence = compute_influence(normalized, weights)
    errors = slice(graph.error_start, graph.token_start)
    token_influence = influence[graph.token_start : graph.logit_start].sum()
    error_influence = influence[errors].sum()
    replacement = token_influence / (token_influence + error_influence).clamp(min=1e-30)
    non_error = 1 - normalized[:, errors].sum(dim=-1)
    output = influence + weights
    completeness = (non_error * output).sum() / output.sum().clamp(min=1e-30)
    return float(replacement), float(completeness)
