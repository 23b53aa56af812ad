"""An attribution graph as a circuit-tracer-style JSON file.

``graph_json`` writes the node/link layout of circuit-tracer's graph files (``metadata``,
``nodes`` with ``node_id``/``feature_type``/``layer``/``ctx_idx``/``influence``/``activation``/``clerp``,
``links`` with ``source``/``target``/``weight``), so tools reading those can read mechlab graphs.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechlab.files import atomic_write
from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.prune import PruneResult, graph_scores, node_influence, prune_graph


def graph_json(
    graph: AttributionGraph,
    pruned: PruneResult | None = None,
    *,
    slug: str = "graph",
    names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The pruned graph in circuit-tracer's graph-file layout (see the module docstring); ``names``
    (``names.feature_names``) become the feature nodes' ``clerp``."""
    pruned = pruned if pruned is not None else prune_graph(graph)
    names = names or {}
    influence = node_influence(graph)
    ids: dict[int, str] = {}
    nodes = []
    for index in pruned.node_mask.nonzero(as_tuple=True)[0].tolist():
        kind = graph.node_kind(index)
        node: dict[str, Any] = {"influence": float(influence[index]), "run_idx": 0, "is_target_logit": False}
        if kind == "feature":
            layer, pos, feature = (int(v) for v in graph.active_features[index])
            ids[index] = f"{layer}_{feature}_{pos}"
            node.update(
                feature=feature,
                layer=str(layer),
                ctx_idx=pos,
                feature_type="cross layer transcoder",
                activation=float(graph.activation_values[index]),
                clerp=names.get(index, ""),
            )
        elif kind == "error":
            layer, pos = divmod(index - graph.error_start, graph.n_pos)
            ids[index] = f"{layer}_error_{pos}"
            node.update(feature=None, layer=str(layer), ctx_idx=pos, feature_type="mlp reconstruction error")
        elif kind == "token":
            pos = index - graph.token_start
            ids[index] = f"E_{int(graph.input_tokens[pos])}_{pos}"
            node.update(feature=None, layer="E", ctx_idx=pos, feature_type="embedding")
        else:
            k = index - graph.logit_start
            token = int(graph.logit_tokens[k])
            ids[index] = f"{graph.n_layers}_{token}_{graph.n_pos - 1}"
            node.update(
                feature=token,
                layer=str(graph.n_layers),
                ctx_idx=graph.n_pos - 1,
                feature_type="logit",
                token_prob=float(graph.logit_probabilities[k]),
                is_target_logit=k == 0,
                clerp=f"output {graph.logit_labels[k]!r} (p={float(graph.logit_probabilities[k]):.3f})",
            )
        node.update(
            node_id=ids[index], jsNodeId=ids[index], reverse_ctx_idx=graph.n_pos - 1 - node["ctx_idx"]
        )
        nodes.append(node)
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    links = [
        {"source": ids[s], "target": ids[t], "weight": float(graph.adjacency[t, s])}
        for t, s in zip(targets.tolist(), sources.tolist(), strict=True)
    ]
    replacement, completeness = graph_scores(graph)
    metadata = {
        "slug": slug,
        "scan": graph.model_name,
        "prompt": graph.prompt,
        "prompt_tokens": list(graph.token_strings),
        "replacement_score": replacement,
        "completeness_score": completeness,
    }
    return {
        "metadata": metadata,
        "qParams": {"pinnedIds": [], "supernodes": []},
        "nodes": nodes,
        "links": links,
    }


def save_graph_json(
    graph: AttributionGraph,
    path: str | Path,
    pruned: PruneResult | None = None,
    *,
    names: Mapping[int, str] | None = None,
) -> Path:
    """Write ``graph_json`` to ``path`` atomically."""
    text = json.dumps(graph_json(graph, pruned, slug=Path(path).stem, names=names), indent=1)
    return atomic_write(Path(path), text + "\n")
