"""Attribution graphs: trace a completion through transcoder features (circuit-tracer's method).

- ``replacement``: the local replacement model (MLPs → transcoders + error terms, attention
  patterns and norm scales frozen), linear in its sources and exact on the prompt.
- ``graph``: the ``AttributionGraph`` (nodes, adjacency matrix); ``attribution``: computing it from batched
  backward passes.
- ``prune``: node and edge influence, pruning, the replacement and completeness scores.
- ``verify``: feature interventions in the real model against the graph's predictions.
- ``paths``: each input token's strongest path through features; ``names``: feature names.
- ``viewer``: the offline interactive HTML page; ``export``: circuit-tracer-style JSON.
"""

from mechlab.graphs.attribution import attribute
from mechlab.graphs.export import graph_json, save_graph_json
from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.names import feature_names, vocabulary_inputs
from mechlab.graphs.paths import FeaturePath, describe_path, feature_paths
from mechlab.graphs.prune import PruneResult, graph_scores, prune_graph
from mechlab.graphs.verify import Verification, verify_graph
from mechlab.graphs.viewer import feature_reports, graph_page, logit_effects

# ``mechlab.attribute_graph``: the same function under a name that says what it attributes.
attribute_graph = attribute

__all__ = [
    "AttributionGraph",
    "FeaturePath",
    "PruneResult",
    "Verification",
    "attribute",
    "attribute_graph",
    "describe_path",
    "feature_names",
    "feature_paths",
    "feature_reports",
    "graph_json",
    "graph_page",
    "graph_scores",
    "logit_effects",
    "prune_graph",
    "save_graph_json",
    "verify_graph",
    "vocabulary_inputs",
]
