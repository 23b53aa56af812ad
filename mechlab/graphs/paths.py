"""Paths through features: how each input token reaches the output through features alone.

``feature_paths``: for each input token, the chain token → feature → … → feature → logit of positive
direct effects (each step raises the next node) whose *share* is largest, the share being the
product of the edges' normalised weights (``prune.normalize_matrix``: an edge's |weight| over all
|weights| into its target). A token's influence on a logit is the sum of the shares of all its
paths, error nodes included; a path's share is its part of that sum, so a path through features
with share 0.01 carries 1% of the logit's input. Error nodes are never on a path: a path is the
part of the computation the transcoders explain.
"""

import itertools
from collections.abc import Mapping
from typing import NamedTuple

import torch

from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.prune import PruneResult, normalize_matrix
from mechlab.render.tokens import visible


class FeaturePath(NamedTuple):
    """A path token → features → logit: node indices in order, its share, and its edges' weights."""

    nodes: tuple[int, ...]
    share: float
    weights: tuple[float, ...]


def feature_paths(
    graph: AttributionGraph, pruned: PruneResult | None = None, *, logit: int = 0
) -> list[FeaturePath]:
    """For each input token with one, its path through features to logit node ``logit`` (0: the
    first, the target) with the largest share; strongest first. With ``pruned``, only over the edges
    it kept (so every path is visible in the pruned graph); shares stay those of the whole input."""
    share = normalize_matrix(graph.adjacency)  # shares of the whole input, pruned edges included
    positive = graph.adjacency > 0
    if pruned is not None:
        positive &= pruned.edge_mask
    n_features, target = graph.n_features, graph.logit_start + logit
    # best[i]: the largest share of a path from node i through features to the target; nxt[i] its next node
    n_nodes = graph.adjacency.shape[0]
    best = torch.zeros(n_nodes, dtype=torch.float64)
    nxt = torch.full((n_nodes,), -1, dtype=torch.long)
    best[target] = 1.0
    layers = graph.active_features[:, 0]
    features = torch.arange(n_features)
    into_features_or_target = torch.cat([torch.tensor([target]), features])
    for index in sorted(range(n_features), key=lambda i: -int(layers[i])):
        _step(index, best, nxt, share, positive, into_features_or_target)
    paths = []
    for pos in range(graph.n_pos):
        node = graph.token_start + pos
        _step(node, best, nxt, share, positive, features)
        if best[node] > 0:
            chain = [node]
            while chain[-1] != target:
                chain.append(int(nxt[chain[-1]]))
            weights = tuple(float(graph.adjacency[b, a]) for a, b in itertools.pairwise(chain))
            paths.append(FeaturePath(tuple(chain), float(best[node]), weights))
    return sorted(paths, key=lambda p: -p.share)


def _step(
    node: int,
    best: torch.Tensor,
    nxt: torch.Tensor,
    share: torch.Tensor,
    positive: torch.Tensor,
    targets: torch.Tensor,
) -> None:
    """Set ``best[node]``/``nxt[node]`` from the best positive edge ``node → t`` among ``targets``."""
    scores = torch.where(positive[targets, node], share[targets, node].double() * best[targets], 0.0)
    top = int(scores.argmax())
    if scores[top] > 0:
        best[node], nxt[node] = scores[top], targets[top]


def describe_path(graph: AttributionGraph, path: FeaturePath, names: Mapping[int, str]) -> str:
    """One line: ``'Tower'@3 → L0 F12@3 [Tower·Bridge → ' Paris' ' Lyon'] → … → ' Paris' (share 0.012)``."""
    return " → ".join(step_label(graph, node, names) for node in path.nodes) + f" (share {path.share:.2e})"


def step_label(graph: AttributionGraph, node: int, names: Mapping[int, str]) -> str:
    """A token, feature or logit node as ``describe_path`` writes it: ``'Tower'@3``,
    ``L0 F12@3 [name]``, ``' Paris'``."""
    kind = graph.node_kind(node)
    if kind == "token":
        pos = node - graph.token_start
        return f"{visible(graph.token_strings[pos])!r}@{pos}"
    if kind == "feature":
        layer, pos, latent = (int(v) for v in graph.active_features[node])
        name = names.get(node)
        return f"L{layer} F{latent}@{pos}" + (f" [{name}]" if name else "")
    return visible(graph.logit_labels[node - graph.logit_start])
