"""Attribution graphs: trace a completion through transcoder features (circuit-tracer's method).

- ``replacement``: the local replacement model (MLPs → transcoders + error terms, attention
  patterns and norm scales frozen), linear in its sources and exact on the prompt.
- ``graph``: the ``AttributionGraph`` (nodes, adjacency matrix); ``attribution``: computing it from batched
  backward passes.
- ``prune``: node and edge influence, pruning, the replacement and completeness scores.
- ``verify``: feature interventions in the real model against the graph's predictions.
- ``viewer``: the offline interactive HTML page and circuit-tracer-style JSON.
"""

from mechlab.graphs.attribution import attribute
from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.prune import PruneResult, graph_scores, prune_graph
from mechlab.graphs.verify import Verification, verify_graph
from mechlab.graphs.viewer import feature_reports, graph_json, graph_page, logit_effects, save_graph_json

# ``mechlab.attribute_graph``: the same function under a name that says what it attributes.
attribute_graph = attribute

__all__ = [
    "AttributionGraph",
    "PruneResult",
    "Verification",
    "attribute",
    "attribute_graph",
    "feature_reports",
    "graph_json",
    "graph_page",
    "graph_scores",
    "logit_effects",
    "prune_graph",
    "save_graph_json",
    "verify_graph",
]
