"""The attribution graph as one offline interactive HTML page.

The page (``graph_page``) draws the pruned graph with inline SVG: input tokens along the bottom,
one row per layer above them (features as circles, error nodes as squares), the logit nodes on top;
a node's column is its position. Edges are drawn with width proportional to their weight (blue
positive, red negative). Hovering a node shows its values; clicking it shows its card (feature:
activation, influence, the tokens its decoder promotes and suppresses through the unembedding and,
with a corpus, its top-activating contexts from ``mechlab.dictionaries.features``) and its strongest
incoming and outgoing edges. A legend explains the replacement and completeness scores and the
intervention agreement. All data travels as JSON made safe for ``<script>`` (``script_json``); the
page loads nothing from the network (``mechlab.render.page``'s Content-Security-Policy).

Feature nodes are named by ``names.feature_names`` (the tokens that excite them, the tokens they
promote); a card lists, when given, the vocabulary tokens that excite the feature on their own
(``names.vocabulary_inputs``); each input token's strongest path through features to the target
(``paths.feature_paths``) is listed and drawn over the graph in dark blue.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mechlab.dictionaries.feature_report import FeatureReport
from mechlab.dictionaries.features import feature_pages_many
from mechlab.dictionaries.transcoder import Transcoder, encoder_view
from mechlab.graphs.attribution import _label
from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.names import TokenValues, feature_names
from mechlab.graphs.paths import FeaturePath, describe_path, feature_paths
from mechlab.graphs.prune import PruneResult, graph_scores, prune_graph
from mechlab.graphs.verify import Verification
from mechlab.render.html import escape, table
from mechlab.render.page import Page, Section, script_json
from mechlab.render.tokens import visible
from mechlab.types import HookedModel

LEGEND = (
    "Replacement score: of the influence reaching the output from input tokens and error nodes, the "
    "share carried by tokens, i.e. flowing through features rather than unexplained error (1 = no "
    "error on any path). Completeness score: the share of each node's input that comes from features "
    "and tokens rather than error nodes, weighted by the node's influence on the output. "
    "Intervention agreement r: Pearson's correlation between the change of the output the graph "
    "predicts when a top feature is ablated and the change measured in the real model."
)

_STYLE = """
#graph-scroll{overflow-x:auto;max-height:80vh;overflow-y:auto}
#graph-svg{border:1px solid #ddd;background:#fff;max-width:none}
#graph-detail{font-size:.9em;margin-top:8px}#graph-hover{min-height:1.5em;color:#333;font-size:.9em}
.gnode{cursor:pointer}.gnode.sel{stroke:#000;stroke-width:2.5px}
.gpath{stroke:#08306b;stroke-opacity:.85;stroke-width:3px;pointer-events:none}
"""

_SCRIPT = """
(function(){var G=__DATA__;var svg=document.getElementById('graph-svg');
var NS='http://www.w3.org/2000/svg';
var W=Math.max(640,90*G.n_pos+80),H=70*(G.n_layers+2)+40;svg.setAttribute('width',W);
svg.setAttribute('height',H);
function xy(n){var slot=n.slot||0,k=n.slots||1;
var x=50+90*n.pos+(k>1?(slot-(k-1)/2)*Math.min(14,70/k):0);
return [x,H-30-70*(n.row+1)];}
var pos={};G.nodes.forEach(function(n){pos[n.id]=xy(n);});
var mx=0;G.links.forEach(function(l){mx=Math.max(mx,Math.abs(l.weight));});
G.links.forEach(function(l){var a=pos[l.source],b=pos[l.target];
var e=document.createElementNS(NS,'line');
e.setAttribute('x1',a[0]);e.setAttribute('y1',a[1]);e.setAttribute('x2',b[0]);
e.setAttribute('y2',b[1]);
e.setAttribute('stroke',l.weight>0?'#1f77b4':'#d62728');e.setAttribute('stroke-opacity','0.45');
e.setAttribute('stroke-width',0.5+4*Math.abs(l.weight)/(mx||1));svg.appendChild(e);});
G.paths.forEach(function(p){for(var i=1;i<p.length;i++){var a=pos[p[i-1]],b=pos[p[i]];
var e=document.createElementNS(NS,'line');e.setAttribute('x1',a[0]);e.setAttribute('y1',a[1]);
e.setAttribute('x2',b[0]);e.setAttribute('y2',b[1]);e.setAttribute('class','gpath');svg.appendChild(e);}});
G.token_labels.forEach(function(t,i){var e=document.createElementNS(NS,'text');
e.setAttribute('x',50+90*i);
e.setAttribute('y',H-8);e.setAttribute('text-anchor','middle');e.setAttribute('font-size','11');
e.textContent=t;svg.appendChild(e);});
var hover=document.getElementById('graph-hover'),detail=document.getElementById('graph-detail');
function text(n){return n.label+' | '+n.kind+(n.kind==='feature'?' | activation '+n.activation.toFixed(3):'')+
' | influence '+n.influence.toFixed(3);}
function show(n){var prev=svg.querySelector('.sel');if(prev)prev.classList.remove('sel');
document.getElementById('gn-'+n.id).classList.add('sel');detail.textContent='';
var h=document.createElement('h3');h.textContent=text(n);detail.appendChild(h);
var card=document.getElementById('card-'+n.id);if(card){var c=card.cloneNode(true);c.hidden=false;
c.removeAttribute('id');detail.appendChild(c);}
[['Strongest incoming edges','target','source'],['Strongest outgoing edges','source','target']]
.forEach(function(s){
var rows=G.links.filter(function(l){return l[s[1]]===n.id;
}).sort(function(a,b){return Math.abs(b.weight)-Math.abs(a.weight);}).slice(0,8);
var p=document.createElement('p');p.textContent=s[0]+(rows.length?':':': none');
detail.appendChild(p);var ul=document.createElement('ul');
rows.forEach(function(l){var li=document.createElement('li');
li.textContent=G.labels[l[s[2]]]+'  '+l.weight.toFixed(4);ul.appendChild(li);});
detail.appendChild(ul);});}
G.nodes.forEach(function(n){var p=pos[n.id],e;
if(n.kind==='error'){e=document.createElementNS(NS,'rect');
e.setAttribute('x',p[0]-5);e.setAttribute('y',p[1]-5);e.setAttribute('width',10);
e.setAttribute('height',10);}
else{e=document.createElementNS(NS,'circle');e.setAttribute('cx',p[0]);e.setAttribute('cy',p[1]);
e.setAttribute('r',n.kind==='logit'?9:n.kind==='token'?6:7);}
e.setAttribute('fill',{feature:'#ffbb78',error:'#aaaaaa',token:'#98df8a',logit:'#c5b0d5'}[n.kind]);
e.setAttribute('stroke','#444');e.setAttribute('class','gnode');e.setAttribute('id','gn-'+n.id);
e.setAttribute('data-node',n.id);
var t=document.createElementNS(NS,'title');t.textContent=text(n);e.appendChild(t);
e.addEventListener('mouseenter',function(){hover.textContent=text(n);});
e.addEventListener('click',function(){show(n);});
svg.appendChild(e);});
if(G.nodes.length){show(G.nodes.filter(function(n){return n.kind==='logit';})[0]||G.nodes[0]);}})();
"""


def _node_label(graph: AttributionGraph, index: int, names: Mapping[int, str]) -> str:
    kind = graph.node_kind(index)
    if kind == "feature":
        layer, pos, feature = (int(v) for v in graph.active_features[index])
        name = names.get(index, "")
        return f"L{layer} F{feature} @{pos}" + (f" {name}" if name else "")
    if kind == "error":
        offset = index - graph.error_start
        return f"error L{offset // graph.n_pos} @{offset % graph.n_pos}"
    if kind == "token":
        pos = index - graph.token_start
        return f"token {graph.token_strings[pos]!r} @{pos}"
    return f"logit {graph.logit_labels[index - graph.logit_start]!r}"


def logit_effects(
    model: HookedModel, transcoders: Mapping[int, Transcoder], graph: AttributionGraph, k: int = 5
) -> dict[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]]:
    """For each feature node: the tokens its decoder row promotes and suppresses most through the
    unembedding (``W_dec[f] @ W_U``, no final norm, as feature dashboards compute it)."""
    w_u = model.W_U.detach().float().cpu()  # type: ignore[attr-defined]
    out = {}
    for index in range(graph.n_features):
        layer, _, feature = (int(v) for v in graph.active_features[index])
        effect = transcoders[layer].W_dec[feature].detach().float().cpu() @ w_u
        up, down = torch.topk(effect, k), torch.topk(-effect, k)
        out[index] = (
            [(_label(model, int(t)), float(v)) for v, t in zip(up.values, up.indices, strict=True)],
            [(_label(model, int(t)), -float(v)) for v, t in zip(down.values, down.indices, strict=True)],
        )
    return out


def feature_reports(
    model: HookedModel,
    transcoders: Mapping[int, Transcoder],
    graph: AttributionGraph,
    pruned: PruneResult,
    tokens: Tensor,
    *,
    contexts: int = 5,
) -> dict[int, FeatureReport]:
    """Feature pages (top-activating contexts over the corpus windows ``tokens``) of the features
    kept in the pruned graph, one report per layer, from one pass over the corpus
    (``mechlab.dictionaries.features.feature_pages_many``)."""
    kept = pruned.node_mask[: graph.n_features].nonzero(as_tuple=True)[0]
    wanted: dict[int, set[int]] = {}
    for index in kept.tolist():
        layer, _, feature = (int(v) for v in graph.active_features[index])
        wanted.setdefault(layer, set()).add(feature)
    if not wanted:
        return {}
    reports = feature_pages_many(
        model,
        {
            f"tc{layer}": (encoder_view(transcoders[layer]), sorted(features))
            for layer, features in sorted(wanted.items())
        },
        tokens,
        contexts=contexts,
        logits=0,
    )
    return {layer: reports[f"tc{layer}"] for layer in sorted(wanted)}


def graph_data(
    graph: AttributionGraph,
    pruned: PruneResult,
    names: Mapping[int, str] | None = None,
    paths: Sequence[FeaturePath] | None = None,
) -> dict[str, Any]:
    """The pruned graph as plain data: nodes (with row/column layout), links, labels, and each
    token's strongest path through features (node ids; ``feature_paths`` unless given)."""
    names = names or {}
    paths = feature_paths(graph, pruned) if paths is None else paths
    from mechlab.graphs.prune import node_influence

    influence = node_influence(graph)
    kept = pruned.node_mask.nonzero(as_tuple=True)[0].tolist()
    nodes = []
    for index in kept:
        kind = graph.node_kind(index)
        if kind == "feature":
            layer, pos = int(graph.active_features[index, 0]), int(graph.active_features[index, 1])
        elif kind == "error":
            layer, pos = divmod(index - graph.error_start, graph.n_pos)
        elif kind == "token":
            layer, pos = -1, index - graph.token_start
        else:
            layer, pos = graph.n_layers, graph.n_pos - 1
        nodes.append(
            {
                "id": index,
                "kind": kind,
                "row": layer + 1 if kind != "logit" else graph.n_layers + 1,
                "pos": pos,
                "label": _node_label(graph, index, names),
                "activation": float(graph.activation_values[index]) if kind == "feature" else 0.0,
                "influence": float(influence[index] if kind != "logit" else graph.logit_weights()[index]),
            }
        )
    # Spread nodes sharing a (row, pos) cell side by side.
    cells: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for node in nodes:
        cells.setdefault((node["row"], node["pos"]), []).append(node)
    for members in cells.values():
        for slot, node in enumerate(members):
            node["slot"], node["slots"] = slot, len(members)
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    links = [
        {"source": int(s), "target": int(t), "weight": float(graph.adjacency[t, s])}
        for t, s in zip(targets.tolist(), sources.tolist(), strict=True)
    ]
    return {
        "n_pos": graph.n_pos,
        "n_layers": graph.n_layers,
        "nodes": nodes,
        "links": links,
        "labels": {str(n["id"]): n["label"] for n in nodes},
        "paths": [list(path.nodes) for path in paths],
        "token_labels": [visible(t) for t in graph.token_strings],
    }


def _card(
    graph: AttributionGraph,
    index: int,
    effects: Mapping[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]],
    reports: Mapping[int, FeatureReport],
    inputs: TokenValues = (),
) -> str:
    layer, pos, feature = (int(v) for v in graph.active_features[index])
    parts = [f'<div class="card" id="card-{index}" hidden>']
    if inputs:
        alone = [(visible(token), f"{value:.3f}") for token, value in inputs]
        parts.append(table(["token", "activation"], alone, caption="Tokens that excite it on their own"))
    if index in effects:
        up, down = effects[index]
        rows = [
            (visible(a), f"{av:+.3f}", visible(b), f"{bv:+.3f}")
            for (a, av), (b, bv) in zip(up, down, strict=True)
        ]
        parts.append(
            table(["promoted", "effect", "suppressed", "effect"], rows, caption="Decoder row through W_U")
        )
    report = reports.get(layer)
    if report is not None:
        try:
            page_feature = report[feature]
        except (KeyError, IndexError, ValueError):
            page_feature = None
        if page_feature is not None:
            section = Section("feature")
            page_feature.add_to(section, anchor=f"feature-{layer}-{feature}")
            parts.extend(block.markup for block in section.blocks if block.widget is None)
    parts.append(f'<p class="note">layer {layer}, position {pos}, feature {feature}</p></div>')
    return "".join(parts)


def graph_page(
    graph: AttributionGraph,
    *,
    pruned: PruneResult | None = None,
    verification: Verification | None = None,
    effects: Mapping[int, tuple[list[tuple[str, float]], list[tuple[str, float]]]] | None = None,
    reports: Mapping[int, FeatureReport] | None = None,
    inputs: Mapping[int, TokenValues] | None = None,
    id_prefix: str | None = None,
) -> Page:
    """The interactive page of ``graph`` (pruned with circuit-tracer's defaults unless given).

    ``effects``: ``logit_effects(...)`` for feature cards; ``reports``: feature pages per layer
    (``feature_reports``: each layer's transcoder's feature pages) for top contexts; ``inputs``:
    ``vocabulary_inputs(...)``, the tokens that excite early-layer features on their own.
    """
    pruned = pruned if pruned is not None else prune_graph(graph)
    effects, inputs = effects or {}, inputs or {}
    names = feature_names(graph, effects, reports, inputs=inputs)
    replacement, completeness = graph_scores(graph)
    page = Page(
        f"Attribution graph: {graph.prompt}",
        subtitle=f"Model {graph.model_name}".strip(),
        id_prefix=id_prefix,
    )
    scores = page.section("Scores", LEGEND)
    rows: list[tuple[str, str]] = [
        ("replacement score", f"{replacement:.3f}"),
        ("completeness score", f"{completeness:.3f}"),
        ("intervention agreement r", "not measured" if verification is None else f"{verification.r:.3f}"),
        (
            "r of the direct edges alone",
            "not measured" if verification is None else f"{verification.r_direct:.3f}",
        ),
        (
            "feature nodes (kept / computed / active)",
            f"{int(pruned.node_mask[: graph.n_features].sum())} / {graph.n_features} / {graph.n_active}",
        ),
        ("edges kept", f"{int(pruned.edge_mask.sum())}"),
    ]
    scores.html('<div id="graph-scores">' + table(["score", "value"], rows) + "</div>")
    logits = [
        (visible(label), f"{float(p):.3f}")
        for label, p in zip(graph.logit_labels, graph.logit_probabilities, strict=True)
    ]
    scores.table(["logit node", "weight (probability)"], logits)
    view = page.section(
        "Graph",
        "Tokens at the bottom, one row per layer (circles: features, squares: error nodes), logits on top. "
        "Hover a node for its values; click it for its card and strongest edges.",
    )
    paths = feature_paths(graph, pruned)
    data = graph_data(graph, pruned, names, paths)
    cards = "".join(
        _card(graph, n["id"], effects, reports or {}, inputs.get(n["id"], ()))
        for n in data["nodes"]
        if n["kind"] == "feature"
    )
    view.html(
        f"<style>{_STYLE}</style>"
        '<div id="graph-hover"></div><div id="graph-scroll"><svg id="graph-svg" role="img" '
        'aria-label="attribution graph"></svg></div><div id="graph-detail"></div>'
        f'<div id="graph-cards">{cards}</div>'
        "<script>" + _SCRIPT.replace("__DATA__", script_json(data)) + "</script>"
    )
    route = page.section(
        "Paths through features",
        "For each input token, its chain of positive direct effects through features alone to "
        f"{graph.logit_labels[0]!r} with the largest share (the product of the edges' shares of their "
        "targets' input; a token's influence is the sum over all its paths, error nodes included). "
        "Drawn in dark blue above.",
    )
    route.table(
        ["token", "share", "path"],
        [
            (
                escape(visible(graph.token_strings[p.nodes[0] - graph.token_start])),
                f"{p.share:.2e}",
                escape(describe_path(graph, p, names)),
            )
            for p in paths
        ],
    )
    if verification is not None:
        section = page.section("Verification", "Top features ablated in the real model.")
        section.table(
            ["node", "predicted Δ", "measured Δ", "direct edge Δ"],
            [
                (escape(_node_label(graph, n, names)), f"{p:+.4f}", f"{m:+.4f}", f"{d:+.4f}")
                for n, p, m, d in zip(
                    verification.nodes,
                    verification.predicted,
                    verification.measured,
                    verification.direct,
                    strict=True,
                )
            ],
        )
    return page
