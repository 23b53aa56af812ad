"""The graph page and the circuit-tracer-style JSON, on the planted toy circuit."""

import json
from pathlib import Path

from mechlab.graphs.attribution import attribute
from mechlab.graphs.export import graph_json, save_graph_json
from mechlab.graphs.prune import prune_graph
from mechlab.graphs.verify import verify_graph
from mechlab.graphs.viewer import graph_data, graph_page, logit_effects
from tests.unit.graphs.planted import N0, N1, PROMPT, T, planted_model


def _graph() -> tuple[object, dict, object]:
    model, transcoders = planted_model()
    return model, transcoders, attribute(model, transcoders, PROMPT, target=T)  # type: ignore[arg-type]


def test_page_is_offline_escaped_and_holds_the_path(tmp_path: Path) -> None:
    model, transcoders, graph = _graph()
    graph.token_strings = ("</script><b>x", *graph.token_strings[1:])  # type: ignore[attr-defined]
    check = verify_graph(model, transcoders, graph, top=4)  # type: ignore[arg-type]
    f0 = graph.feature_index(0, 5, N0)  # type: ignore[attr-defined]
    page = graph_page(
        graph,  # type: ignore[arg-type]
        verification=check,
        effects=logit_effects(model, transcoders, graph),  # type: ignore[arg-type]
        inputs={f0: [("<A>", 1.5)]},
        id_prefix="g",
    )
    html = page.save(tmp_path / "graph.html").read_text()
    assert "</script><b>" not in html and "\\u003c/script\\u003e" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert "replacement score" in html and "intervention agreement r" in html
    data = graph_data(graph, prune_graph(graph))  # type: ignore[arg-type]
    ids = {n["id"] for n in data["nodes"]}
    f1 = graph.feature_index(1, 5, N1)  # type: ignore[attr-defined]
    assert {f0, f1} <= ids
    assert {"source": f0, "target": f1} in [
        {"source": link["source"], "target": link["target"]} for link in data["links"]
    ]
    card = html[html.index(f'id="card-{f0}"') :]
    card = card[: card.index("</div>")]
    assert "Tokens that excite it on their own" in card and "&lt;A&gt;" in card and "1.500" in card


def test_json_export_follows_circuit_tracer_layout(tmp_path: Path) -> None:
    _, _, graph = _graph()
    path = save_graph_json(graph, tmp_path / "g.json")  # type: ignore[arg-type]
    data = json.loads(path.read_text())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    ids = {n["node_id"] for n in data["nodes"]}
    assert f"0_{N0}_5" in ids and f"1_{N1}_5" in ids and "E_7_5" in ids and f"2_{T}_5" in ids
    assert {"source": f"0_{N0}_5", "target": f"1_{N1}_5"} in [
        {"source": link["source"], "target": link["target"]} for link in data["links"]
    ]
    assert data == graph_json(graph, slug="g")  # type: ignore[arg-type]
