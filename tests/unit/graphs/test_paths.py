"""Paths through features: the planted circuit's path is found; shares are products of edge shares
computed by hand; negative edges and error nodes are never on a path; features are named."""

import pytest
import torch

from mechlab.dictionaries.feature_report import Context, Feature, FeatureReport
from mechlab.errors import InputError
from mechlab.graphs.attribution import attribute
from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.names import feature_names, vocabulary_inputs
from mechlab.graphs.paths import describe_path, feature_paths
from mechlab.graphs.prune import prune_graph
from mechlab.graphs.viewer import logit_effects
from mechlab.hooks import hooked, recorder
from mechlab.sites import Site
from mechlab.tokens import token_text
from tests.unit.graphs.planted import N0, N1, PROMPT, A, T, planted_model


def test_the_planted_circuit_is_token_a_to_logit_t() -> None:
    model, transcoders = planted_model()
    graph = attribute(model, transcoders, PROMPT, target=T)  # type: ignore[arg-type]
    paths = feature_paths(graph, prune_graph(graph))
    f0, f1 = graph.feature_index(0, 5, N0), graph.feature_index(1, 5, N1)
    assert paths[0].nodes == (graph.token_start + 5, f0, f1, graph.logit_start)
    assert all(w > 0 for w in paths[0].weights)
    assert paths[0].share == max(p.share for p in paths)
    names = feature_names(graph, logit_effects(model, transcoders, graph))  # type: ignore[arg-type]
    assert names[f1].startswith(f"→ '{graph.logit_labels[0]}'")  # N1 writes T's unembedding direction
    line = describe_path(graph, paths[0], names)
    assert line.startswith(f"{graph.token_strings[5]!r}@5 → L0 F{N0}@5") and f"L1 F{N1}@5" in line


def _hand_graph() -> AttributionGraph:
    """Two tokens, features a (layer 0, pos 0) and b (layer 1, pos 1), 2x2 error nodes, one logit.

    Edges (target ← source: weight): a ← t0: 2, a ← t1: 2; b ← a: 3, b ← t1: -1, b ← t0: 1;
    logit ← b: 4, logit ← error(1, 1): 4, logit ← a: -2, logit ← t1: 1.
    """
    n = 2 + 4 + 2 + 1  # features, errors, tokens, logit
    a, b, t0, t1, logit = 0, 1, 6, 7, 8
    adjacency = torch.zeros(n, n)
    for target, source, weight in [
        (a, t0, 2.0),
        (a, t1, 2.0),
        (b, a, 3.0),
        (b, t1, -1.0),
        (b, t0, 1.0),
        (logit, b, 4.0),
        (logit, 5, 4.0),
        (logit, a, -2.0),
        (logit, t1, 1.0),
    ]:
        adjacency[target, source] = weight
    return AttributionGraph(
        prompt="x y",
        input_tokens=torch.tensor([3, 4]),
        token_strings=("x", " y"),
        active_features=torch.tensor([[0, 0, 9], [1, 1, 2]]),
        activation_values=torch.tensor([1.0, 1.0]),
        adjacency=adjacency,
        logit_tokens=torch.tensor([5]),
        logit_labels=(" z",),
        logit_probabilities=torch.tensor([1.0]),
        logit_values=torch.tensor([3.0]),
        n_layers=2,
        n_active=2,
    )


def test_shares_are_products_of_edge_shares_and_skip_negative_edges_and_errors() -> None:
    graph = _hand_graph()
    paths = {p.nodes[0]: p for p in feature_paths(graph)}
    into_logit = 4 / (4 + 4 + 2 + 1)  # b's share of the logit's |input|
    into_b = {"a": 3 / (3 + 1 + 1), "t0": 1 / 5}
    into_a = 2 / 4
    # t0 → a → b → logit (share 0.5·0.6·0.364) beats t0 → b → logit (0.2·0.364)
    assert paths[6].nodes == (6, 0, 1, 8)
    assert paths[6].share == pytest.approx(into_a * into_b["a"] * into_logit)
    assert paths[6].weights == (2.0, 3.0, 4.0)
    # t1's direct edge into b is negative, its edge into the logit skips features: it goes through a
    assert paths[7].nodes == (7, 0, 1, 8)
    # the error node's edge to the logit is never a path; a's negative edge to the logit is not used
    assert all(5 not in p.nodes for p in paths.values())
    assert paths[6].share == max(p.share for p in paths.values())
    # with the edge a → b pruned away, t0 reaches the logit only through its own edge into b
    pruned = prune_graph(graph, node_threshold=1.0, edge_threshold=1.0)
    pruned.edge_mask[1, 0] = False
    assert feature_paths(graph, pruned)[0].nodes == (6, 1, 8)
    assert feature_paths(graph, pruned)[0].share == pytest.approx(into_b["t0"] * into_logit)


def test_names_join_peak_tokens_and_the_promoted_token() -> None:
    graph = _hand_graph()

    def context(tokens: tuple[str, ...], peak: int) -> Context:
        return Context(
            tokens=tokens,
            values=tuple(float(i == peak) for i in range(len(tokens))),
            peak=peak,
            sequence=0,
            position=peak,
        )

    feature = Feature(
        latent=9,
        contexts=(context((" the", " Tower"), 1), context((" a", " Tower"), 1), context((" Bridge",), 0)),
        n_tokens=10,
        n_active=3,
        max_value=1.0,
        mean_active=1.0,
        counts=(),
        promoted=(),
        suppressed=(),
    )
    report = FeatureReport(
        name="tc0", site="mlp_in.0", features=(feature,), n_tokens=10, corpus="", frequency=torch.zeros(16)
    )
    promoted = [("\ufffd", 3.0), (" Paris", 2.0), (" Lyon", 1.5), (" Nice", 1.0)]
    effects = {0: (promoted, [(" dog", -1.0)]), 1: ([], [])}
    names = feature_names(graph, effects, {0: report})
    assert names == {0: "Tower·Bridge → ' Paris' ' Lyon'"}  # the byte piece left out, two promoted
    assert feature_names(graph, effects, {0: report}, promoted=1) == {0: "Tower·Bridge → ' Paris'"}
    # the vocabulary tokens that excite a feature alone, when given, replace its corpus peaks
    inputs = {0: [(" Eiffel", 3.0), ("Eiffel", 2.5), (" Tower", 1.0)]}
    assert feature_names(graph, effects, {0: report}, inputs=inputs)[0] == "Eiffel·Tower → ' Paris' ' Lyon'"


def test_vocabulary_inputs_rank_the_planted_token_first_with_its_activation_alone() -> None:
    model, transcoders = planted_model()
    graph = attribute(model, transcoders, PROMPT, target=T)  # type: ignore[arg-type]
    f0, f1 = graph.feature_index(0, 5, N0), graph.feature_index(1, 5, N1)
    # no tokenizer: each token runs after the prompt's first token (in this toy, layer 0's attention
    # must mix a token in before A for N0 to fire)
    inputs = vocabulary_inputs(model, transcoders, graph, k=3, batch_size=5)  # type: ignore[arg-type]
    assert set(inputs) == set((graph.active_features[:, 0] == 0).nonzero().flatten().tolist())  # layer 0
    vocab = torch.arange(model.cfg.d_vocab)  # type: ignore[attr-defined]
    acts: dict[Site, torch.Tensor] = {}
    with hooked(model, {Site("mlp_in", 0): recorder(acts)}):  # type: ignore[arg-type]
        model(torch.stack([torch.full_like(vocab, int(PROMPT[0])), vocab], 1))  # type: ignore[operator]
    alone = transcoders[0].encode(acts[Site("mlp_in", 0)][:, -1]).detach()  # [d_vocab, d_sae], one batch
    for node, listed in inputs.items():
        column = alone[:, int(graph.active_features[node, 2])]
        top = column.topk(3)
        expected = [(token_text(model, int(t)), float(v)) for v, t in zip(*top, strict=True) if v > 0]  # type: ignore[arg-type]
        assert [t for t, _ in listed] == [t for t, _ in expected]
        assert [v for _, v in listed] == pytest.approx([v for _, v in expected], rel=1e-5)
    assert inputs[f0][0][0] == token_text(model, A) and inputs[f0][0][1] > 0  # type: ignore[arg-type]
    # N1 reads what N0 writes: alone, token A excites it too, through layer 0's MLP
    both = vocabulary_inputs(model, transcoders, graph, layers=(0, 1), k=3)  # type: ignore[arg-type]
    assert both[f1][0][0] == token_text(model, A)  # type: ignore[arg-type]
    assert [v for _, v in both[f0]] == pytest.approx([v for _, v in inputs[f0]], rel=1e-5)
    # with a pruned graph, only the kept features
    pruned = prune_graph(graph)
    pruned.node_mask[f0] = False
    assert f0 not in vocabulary_inputs(model, transcoders, graph, pruned, k=3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="No transcoder for layers"):
        vocabulary_inputs(model, {1: transcoders[1]}, graph)  # type: ignore[arg-type]
