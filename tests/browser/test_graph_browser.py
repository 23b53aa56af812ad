"""The attribution-graph page in headless Chromium: offline, no console error, nodes and the path
through features drawn, a click shows the node's card and edges, hovering shows its values."""

from pathlib import Path

import pytest

from mechlab.graphs.attribution import attribute
from mechlab.graphs.verify import verify_graph
from mechlab.graphs.viewer import graph_page, logit_effects
from tests.browser.harness import visit
from tests.unit.graphs.planted import N0, PROMPT, T, planted_model


@pytest.mark.browser
def test_graph_page_is_interactive_offline(chromium, tmp_path: Path) -> None:
    model, transcoders = planted_model()
    graph = attribute(model, transcoders, PROMPT, target=T)
    check = verify_graph(model, transcoders, graph, top=4)
    page = graph_page(graph, verification=check, effects=logit_effects(model, transcoders, graph))
    seen = visit(chromium, page.save(tmp_path / "graph.html"))
    assert seen.external_requests == [] and seen.console_errors == [] and seen.dialogs == []
    driver = seen.driver
    nodes = driver.find_elements("css selector", "#graph-svg .gnode")
    assert len(nodes) >= 4
    assert len(driver.find_elements("css selector", "#graph-svg line")) >= 3
    # the planted path token A → F0 → F1 → logit T is drawn over the graph: three path segments
    assert len(driver.find_elements("css selector", "#graph-svg line.gpath")) >= 3
    f0 = graph.feature_index(0, 5, N0)
    node = driver.find_element("css selector", f"#gn-{f0}")
    driver.execute_script(
        "arguments[0].dispatchEvent(new MouseEvent('mouseenter'));"
        "arguments[0].dispatchEvent(new MouseEvent('click'));",
        node,
    )
    assert f"F{N0}" in driver.find_element("id", "graph-hover").text
    detail = driver.find_element("id", "graph-detail").text
    assert f"L0 F{N0}" in detail and "Strongest incoming edges" in detail and "promoted" in detail
    assert "token" in detail  # its strongest incoming edge comes from the token
