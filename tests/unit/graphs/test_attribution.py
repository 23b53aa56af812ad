"""The replacement model, attribution graphs, pruning and scores on tiny seeded models."""

import pytest
import torch

import mechlab
from mechlab.dictionaries.transcoder import Transcoder, transcoder_config
from mechlab.errors import InputError
from mechlab.graphs.attribution import _rows, _Target, attribute
from mechlab.graphs.prune import (
    compute_influence,
    find_threshold,
    graph_scores,
    normalize_matrix,
    prune_graph,
)
from mechlab.graphs.replacement import capture_run, replacement_logits
from tests.unit.graphs.planted import N0, N1, PROMPT, A, T, planted_model


@pytest.fixture(scope="module")
def model() -> object:
    return mechlab.load_model("toy:tiny").model


def random_transcoders(model: object, *, k: int = 4) -> dict[int, Transcoder]:
    d = model.cfg.d_model  # type: ignore[attr-defined]
    out = {}
    for layer in range(model.cfg.n_layers):  # type: ignore[attr-defined]
        tc = Transcoder(transcoder_config(d, layer, 4 * d, k=k), skip=True, seed=layer)
        generator = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            assert tc.W_skip is not None
            tc.W_skip.copy_(0.05 * torch.randn(d, d, generator=generator))
            tc.b_dec.copy_(0.1 * torch.randn(d, generator=generator))
            tc.b_enc.copy_(0.1 * torch.randn(4 * d, generator=generator))
        out[layer] = tc
    return out


def test_replacement_model_reproduces_the_logits(model: object) -> None:
    transcoders = random_transcoders(model)
    tokens = torch.tensor([[3, 14, 15, 9, 2, 6, 5]])
    run = capture_run(model, transcoders, tokens)  # type: ignore[arg-type]
    assert run.errors.abs().max() > 0.01  # random transcoders: the errors carry real weight
    logits = replacement_logits(model, run, transcoders)  # type: ignore[arg-type]
    torch.testing.assert_close(logits, run.logits, atol=1e-5, rtol=0)


def test_rows_plus_offset_sum_to_the_target_values(model: object) -> None:
    transcoders = random_transcoders(model)
    graph = attribute(model, transcoders, torch.tensor([3, 14, 15, 9, 2, 6]), batch_size=7)  # type: ignore[arg-type]
    run = capture_run(model, transcoders, graph.input_tokens[None])  # type: ignore[arg-type]
    assert graph.n_features == graph.n_active > 0
    # Recompute a few rows and their offsets (every source scaled to 0: the biases alone).
    src_feats = graph.active_features
    vecs = torch.stack(
        [transcoders[layer].W_dec[f] * run.activations[layer][p, f] for layer, p, f in src_feats.tolist()]
    )
    by_layer = {
        layer: (src_feats[:, 0] == layer).nonzero(as_tuple=True)[0]
        for layer in (0, 1)
        if (src_feats[:, 0] == layer).any()
    }
    last = [i for i in range(graph.n_features) if int(src_feats[i, 0]) == 1][:3]
    targets = [_Target("feature", int(src_feats[i, 1]), layer=1, feature=int(src_feats[i, 2])) for i in last]
    rows, values = _rows(model, run, transcoders, targets, (src_feats, vecs, by_layer))  # type: ignore[arg-type]
    _, offsets = _rows(model, run, transcoders, targets, (src_feats, vecs, by_layer), scale=0.0)  # type: ignore[arg-type]
    pre = torch.stack(
        [
            transcoders[1].pre_activation(run.mlp_in[1][int(src_feats[i, 1])])[int(src_feats[i, 2])]
            for i in last
        ]
    )
    torch.testing.assert_close(values, pre, atol=1e-4, rtol=0)
    torch.testing.assert_close(rows.sum(1) + offsets, values, atol=1e-4, rtol=0)
    torch.testing.assert_close(rows, graph.adjacency[last, : rows.shape[1]], atol=1e-5, rtol=0)
    # Logit rows: edges into each logit node plus the bias offset give the (demeaned) logit.
    logit_targets = [_Target("logit", graph.n_pos - 1, direction=d) for d in _demeaned(graph)]
    _, logit_offsets = _rows(model, run, transcoders, logit_targets, (src_feats, vecs, by_layer), scale=0.0)  # type: ignore[arg-type]
    totals = graph.adjacency[graph.logit_start :].sum(1) + logit_offsets
    torch.testing.assert_close(totals, graph.logit_values, atol=1e-4, rtol=0)
    expected = run.logits[-1, graph.logit_tokens] - run.logits[-1].mean()
    torch.testing.assert_close(graph.logit_values, expected, atol=1e-4, rtol=0)
    # Layer-1 features receive nothing from layer-1 sources.
    layer1 = (src_feats[:, 0] == 1).nonzero(as_tuple=True)[0]
    assert graph.adjacency[layer1][:, layer1].abs().max() == 0


def _demeaned(graph: object) -> list[torch.Tensor]:
    out = []
    for token in graph.logit_tokens.tolist():  # type: ignore[attr-defined]
        direction = torch.full((50,), -1 / 50)
        direction[token] += 1
        out.append(direction)
    return out


def test_graph_recovers_the_planted_path() -> None:
    model, transcoders = planted_model()
    run = capture_run(model, transcoders, PROMPT[None])  # type: ignore[arg-type]
    assert run.errors[:, 1:].abs().max() < 1e-5  # the transcoders are the MLPs
    # The first position carries no features: its MLP outputs are wholly error.
    assert all((z[0] == 0).all() for z in run.activations.values())
    assert run.errors[:, 0].abs().max() > 0.01
    assert run.activations[0][:, N0].nonzero().flatten().tolist() == [5]  # fires on token A only
    graph = attribute(model, transcoders, PROMPT, target=T, batch_size=64)  # type: ignore[arg-type]
    f0, f1 = graph.feature_index(0, 5, N0), graph.feature_index(1, 5, N1)
    assert f0 is not None and f1 is not None
    token_a = graph.token_start + 5
    adjacency = graph.adjacency
    assert int(adjacency[graph.logit_start].abs().argmax()) == f1
    assert int(adjacency[f1].abs().argmax()) == f0
    assert int(adjacency[f0].abs().argmax()) == token_a
    assert adjacency[graph.logit_start, f1] > 0 and adjacency[f1, f0] > 0 and adjacency[f0, token_a] > 0
    replacement, completeness = graph_scores(graph)
    # Only the first position's error nodes (the MLP outputs left unreplaced there) take a share.
    assert replacement == pytest.approx(1.0, abs=1e-3) and completeness == pytest.approx(1.0, abs=1e-3)
    pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
    assert pruned.node_mask[[f0, f1]].all()
    assert (
        pruned.edge_mask[graph.logit_start, f1] and pruned.edge_mask[f1, f0] and pruned.edge_mask[f0, token_a]
    )
    assert int(pruned.node_mask[: graph.n_features].sum()) < graph.n_features // 4
    assert graph.prompt.endswith(str(A))


def test_influence_matches_the_matrix_series() -> None:
    generator = torch.Generator().manual_seed(0)
    adjacency = torch.tril(torch.randn(6, 6, generator=generator), diagonal=-1).T.contiguous()  # acyclic
    adjacency = torch.triu(adjacency, diagonal=1)
    weights = torch.tensor([1.0, 0, 0, 0, 0, 0])
    normalized = normalize_matrix(adjacency)
    series = sum(torch.linalg.matrix_power(normalized, k) for k in range(1, 7))
    torch.testing.assert_close(compute_influence(normalized, weights), weights @ series)
    assert find_threshold(torch.tensor([4.0, 3.0, 2.0, 1.0]), 0.6) == 3.0


def test_scores_fall_with_error_nodes(model: object) -> None:
    graph = attribute(model, random_transcoders(model), torch.tensor([3, 14, 15, 9]))  # type: ignore[arg-type]
    replacement, completeness = graph_scores(graph)
    assert 0 < replacement < 0.99 and 0 < completeness < 0.99


def test_bad_inputs(model: object) -> None:
    transcoders = random_transcoders(model)
    with pytest.raises(InputError, match="at least one transcoder"):
        attribute(model, {}, torch.tensor([1, 2]))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="the key must be its layer"):
        attribute(model, {1: transcoders[0]}, torch.tensor([1, 2]))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="batch_size"):
        attribute(model, transcoders, torch.tensor([1, 2]), batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="node_threshold"):
        prune_graph(attribute(model, transcoders, torch.tensor([1, 2])), node_threshold=2.0)  # type: ignore[arg-type]


def test_verification_agrees_on_the_planted_model() -> None:
    from mechlab.graphs.verify import pearson, verify_graph

    model, transcoders = planted_model()
    graph = attribute(model, transcoders, PROMPT, target=T)  # type: ignore[arg-type]
    check = verify_graph(model, transcoders, graph, top=8)  # type: ignore[arg-type]
    assert check.r > 0.99
    assert check.nodes[0] in (graph.feature_index(0, 5, N0), graph.feature_index(1, 5, N1))
    assert check.measured[0] < -3.0  # ablating either planted feature removes most of logit T
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]) == pytest.approx(0.9986, abs=1e-3)


def test_replacement_model_is_exact_on_a_llama(tiny_llama: object) -> None:
    """RMSNorm, rotary attention with grouped key/value heads, a gated MLP: all frozen or replaced."""
    model = tiny_llama.model  # type: ignore[attr-defined]
    transcoders = random_transcoders(model)
    tokens = torch.tensor([[3, 14, 15, 9, 2, 6, 5, 3]])
    run = capture_run(model, transcoders, tokens)
    assert run.rms
    torch.testing.assert_close(replacement_logits(model, run, transcoders), run.logits, atol=1e-5, rtol=0)
    graph = attribute(model, transcoders, tokens[0], target=7)
    run_logits = run.logits[-1]
    expected = run_logits[7] - run_logits.mean()
    assert graph.logit_values[0] == pytest.approx(float(expected), abs=1e-4)
    # The biases of a Llama are zero and the transcoders' b_dec is the only offset: check the sum.
    _, offsets = _rows(
        model,
        run,
        transcoders,
        [_Target("logit", 7, direction=_demeaned_for(7, model.cfg.d_vocab))],
        (graph.active_features, torch.zeros(graph.n_features, model.cfg.d_model), {}),
        scale=0.0,
    )
    assert graph.adjacency[graph.logit_start].sum() + offsets[0] == pytest.approx(float(expected), abs=1e-3)


def _demeaned_for(token: int, d_vocab: int) -> torch.Tensor:
    direction = torch.full((d_vocab,), -1 / d_vocab)
    direction[token] += 1
    return direction
