"""Checking a graph against the real model: ablate top features, compare predicted with measured.

For each of the ``top`` features with the largest influence on the output, the feature is ablated
in the real model — its decoder vector ``a_f · W_dec[f]`` is subtracted from ``mlp_out`` at its
layer and position, and everything downstream (attention patterns, norms, the real MLPs) is
recomputed — and the change of each logit node's value is measured. The graph predicts that change
by propagating the ablation through its adjacency matrix (errors and attention frozen; a downstream
feature whose pre-activation moves by ``Δ`` moves its activation by ``Δ``, ``Δ/a_t`` of its
edges). The agreement is Pearson's r between predicted and measured changes of the weighted logit
nodes over the ablated features.
"""

import dataclasses
from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.dictionaries.transcoder import Transcoder
from mechlab.errors import InputError
from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.prune import node_influence
from mechlab.hooks import hooked
from mechlab.sites import Site
from mechlab.types import HookedModel


@dataclasses.dataclass(frozen=True)
class Verification:
    """Predicted and measured effects of ablating the graph's top features.

    Attributes:
        nodes: the graph node index of each ablated feature.
        predicted: the graph's predicted change of the output (logit nodes weighted by their
            probabilities) when the feature is ablated; measured: the real model's change.
        direct: the direct-edge part of ``predicted``.
        r: Pearson's correlation of predicted and measured (NaN with fewer than 3 features).
        r_direct: the same for the direct-edge prediction alone.
    """

    nodes: tuple[int, ...]
    predicted: tuple[float, ...]
    measured: tuple[float, ...]
    direct: tuple[float, ...]
    r: float
    r_direct: float


def predicted_ablation(graph: AttributionGraph, node: int) -> Float[Tensor, " n_logits"]:
    """The change of each logit node's value when feature ``node`` is ablated, by the graph."""
    adjacency = graph.adjacency.double()
    n_features = graph.n_features
    relative = torch.zeros(adjacency.shape[0], dtype=torch.float64)  # Δa / a per feature node
    relative[node] = -1.0
    layers = graph.active_features[:, 0]
    for layer in sorted(set(layers.tolist())):
        later = (layers == layer).nonzero(as_tuple=True)[0]
        later = later[later != node]
        delta = adjacency[later, :n_features] @ relative[:n_features]
        relative[later] = delta / graph.activation_values[later].double()
    return (adjacency[graph.logit_start :, :n_features] @ relative[:n_features]).float()


@torch.no_grad()
def measured_ablation(
    model: HookedModel,
    transcoders: Mapping[int, Transcoder],
    graph: AttributionGraph,
    node: int,
) -> Float[Tensor, " n_logits"]:
    """The change of each logit node's value in the real model when feature ``node`` is ablated."""
    layer, pos, feature = (int(v) for v in graph.active_features[node])
    tc = transcoders[layer]
    value = float(graph.activation_values[node])
    one = torch.zeros(tc.cfg.d_sae)
    one[feature] = value
    vector = (tc.decode(one) - tc.decode(torch.zeros(tc.cfg.d_sae))).to(model.cfg.device)

    def ablate(act: Tensor, _site: Site) -> Tensor:
        out = act.clone()
        out[:, pos] -= vector.to(act.dtype)
        return out

    tokens = graph.input_tokens[None].to(model.cfg.device)
    with hooked(model, {Site("mlp_out", layer): ablate}):
        logits = model(tokens)[0, -1].float().cpu()
    return _logit_values(graph, logits) - graph.logit_values


def _logit_values(graph: AttributionGraph, logits: Float[Tensor, " d_vocab"]) -> Float[Tensor, " n_logits"]:
    if graph.n_logits == 1 and len(graph.logit_tokens) == 2:  # a logit difference
        return (logits[graph.logit_tokens[0]] - logits[graph.logit_tokens[1]]).reshape(1)
    return logits[graph.logit_tokens] - logits.mean()


def verify_graph(
    model: HookedModel, transcoders: Mapping[int, Transcoder], graph: AttributionGraph, *, top: int = 20
) -> Verification:
    """Ablate the ``top`` most influential features in the real model; see the module docstring."""
    if top < 1:
        raise InputError(f"top must be at least 1; got {top}.")
    if graph.n_features == 0:
        raise InputError("The graph has no feature nodes to verify (no transcoder feature was active).")
    influence = node_influence(graph)[: graph.n_features]
    nodes = torch.topk(influence, min(top, graph.n_features)).indices.tolist()
    predicted, measured, direct = [], [], []
    for node in nodes:
        by_graph, in_model = ablation_effect(model, transcoders, graph, node)
        predicted.append(by_graph)
        measured.append(in_model)
        direct.append(float(-graph.adjacency[graph.logit_start :, node] @ graph.logit_probabilities))
    return Verification(
        tuple(nodes),
        tuple(predicted),
        tuple(measured),
        tuple(direct),
        pearson(predicted, measured),
        pearson(direct, measured),
    )


def ablation_effect(
    model: HookedModel, transcoders: Mapping[int, Transcoder], graph: AttributionGraph, node: int
) -> tuple[float, float]:
    """``(predicted, measured)``: the change of the output (logit nodes weighted by their
    probabilities) when feature ``node`` is ablated, by the graph and in the real model."""
    weights = graph.logit_probabilities
    predicted = float(predicted_ablation(graph, node) @ weights)
    return predicted, float(measured_ablation(model, transcoders, graph, node) @ weights)


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson's r (NaN for fewer than 3 points or a constant series)."""
    if len(x) < 3:
        return float("nan")
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float((a @ b) / denominator) if denominator > 0 else float("nan")
