"""Names for the features of an attribution graph, computed, not written.

``feature_names``: a short name per feature node, ``"A·B → 'x' 'y'"``: what excites the feature (the
tokens it peaks on in its top corpus contexts, or for early layers the vocabulary tokens that excite
it most on their own) and the tokens its decoder row promotes through the unembedding, as
circuit-tracer's ``clerp`` labels.

``vocabulary_inputs``: for features of early layers, whose inputs are close to the token embedding,
every vocabulary token is run through the model on its own (after the corpus's document separator,
where the model reads the first token of a text) and the ``k`` that excite each feature most are
kept. Unlike top contexts from a few thousand corpus tokens, this covers the whole vocabulary: a
layer-0 feature that fires on ``"iffel"`` in the prompt shows whether it is an "Eiffel" feature or
one for every token starting with "F".
"""

from collections.abc import Mapping, Sequence

import torch

from mechlab.dictionaries.feature_report import FeatureReport
from mechlab.dictionaries.transcoder import Transcoder
from mechlab.errors import InputError
from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.prune import PruneResult
from mechlab.render.tokens import visible
from mechlab.sites import Site
from mechlab.tokens import token_text
from mechlab.types import HookedModel

TokenValues = Sequence[tuple[str, float]]
Effects = Mapping[int, tuple[TokenValues, TokenValues]]


def vocabulary_inputs(
    model: HookedModel,
    transcoders: Mapping[int, Transcoder],
    graph: AttributionGraph,
    pruned: PruneResult | None = None,
    *,
    layers: Sequence[int] = (0,),
    k: int = 5,
    prefix: Sequence[int] | None = None,
    batch_size: int = 2048,
) -> dict[int, list[tuple[str, float]]]:
    """For each feature node in ``layers`` (those ``pruned`` kept, when given): the ``k`` vocabulary
    tokens that activate it most, each token run alone after the token ids ``prefix`` (default: the
    corpus's document separator; the prompt's first token for a model without a tokenizer), with the
    activation (only tokens that activate it at all)."""
    wanted: dict[int, list[int]] = {}
    for index in range(graph.n_features):
        layer = int(graph.active_features[index, 0])
        if layer in layers and (pruned is None or bool(pruned.node_mask[index])):
            wanted.setdefault(layer, []).append(index)
    missing = sorted(set(wanted) - set(transcoders))
    if missing:
        raise InputError(f"No transcoder for layers {missing}; the graph has features there.")
    if not wanted:
        return {}
    if k < 1 or batch_size < 1:
        raise InputError(f"k and batch_size must be positive; got k={k}, batch_size={batch_size}.")
    from mechlab.activations import capture

    tokenizer = getattr(model, "tokenizer", None)
    if prefix is None:
        from mechlab.dictionaries.corpus import separator_id

        prefix = graph.input_tokens[:1].tolist() if tokenizer is None else [separator_id(tokenizer)]
    vocab = int(model.cfg.d_vocab) if tokenizer is None else min(int(model.cfg.d_vocab), len(tokenizer))
    before = torch.tensor(list(prefix), dtype=torch.long)
    sites = [Site("mlp_in", layer) for layer in wanted]
    best: dict[int, torch.Tensor] = {}
    best_ids: dict[int, torch.Tensor] = {}
    for start in range(0, vocab, batch_size):
        ids = torch.arange(start, min(vocab, start + batch_size))
        batch = torch.cat([before.expand(len(ids), -1), ids[:, None]], 1)
        acts = capture(model, batch.to(model.cfg.device), sites, logits=False, max_bytes=None)
        for layer, nodes in wanted.items():
            transcoder = transcoders[layer]
            x = acts[Site("mlp_in", layer)][:, -1].to(transcoder.W_enc.device)
            with torch.no_grad():
                z = transcoder.encode(x)[:, graph.active_features[nodes, 2]].T.float().cpu()
            values = torch.cat([best.get(layer, z[:, :0]), z], 1)
            seen = best_ids.get(layer, ids[None, :0].expand(len(z), -1))
            candidates = torch.cat([seen, ids.expand(len(z), -1)], 1)
            order = values.topk(min(k, values.shape[1]), dim=1)
            best[layer], best_ids[layer] = order.values, candidates.gather(1, order.indices)
    out: dict[int, list[tuple[str, float]]] = {}
    for layer, nodes in wanted.items():
        for row, index in enumerate(nodes):
            pairs = zip(best_ids[layer][row].tolist(), best[layer][row].tolist(), strict=True)
            out[index] = [(token_text(model, token), value) for token, value in pairs if value > 0]
    return out


def feature_names(
    graph: AttributionGraph,
    effects: Effects | None = None,
    reports: Mapping[int, FeatureReport] | None = None,
    *,
    inputs: Mapping[int, TokenValues] | None = None,
    tokens: int = 2,
    promoted: int = 2,
) -> dict[int, str]:
    """A name per feature node: ``"A·B → 'x' 'y'"``. ``A·B``: the ``tokens`` vocabulary tokens that
    excite it most on their own (``inputs``, from ``vocabulary_inputs``) when given for that node,
    else the distinct tokens it peaks on in its top contexts (``reports``, per layer). ``'x' 'y'``:
    the ``promoted`` tokens its decoder promotes most (``effects``), leaving out byte pieces (``�``)."""
    names = {}
    for index in range(graph.n_features):
        layer, _, latent = (int(v) for v in graph.active_features[index])
        parts = []
        excited = [_word(token) for token, _ in (inputs or {}).get(index, ())]
        if not excited:
            excited = _peaks(reports, layer, latent)
        if excited:
            parts.append("·".join(list(dict.fromkeys(excited))[:tokens]))
        up = [label for label, _ in (effects or {}).get(index, ((), ()))[0] if _readable(label)]
        if up:
            parts.append("→ " + " ".join(repr(visible(label)) for label in up[:promoted]))
        if parts:
            names[index] = " ".join(parts)
    return names


def _peaks(reports: Mapping[int, FeatureReport] | None, layer: int, latent: int) -> list[str]:
    """The tokens at the peaks of a feature's top contexts, in order."""
    report = (reports or {}).get(layer)
    if report is None:
        return []
    try:
        contexts = report[latent].contexts
    except (KeyError, IndexError, ValueError):
        return []
    return [_word(c.tokens[c.peak]) for c in contexts]


def _word(token: str) -> str:
    """A token's text for a name: whitespace made visible, surrounding spaces dropped."""
    return visible(token).strip() or visible(token)


def _readable(token: str) -> bool:
    """Whether a token's text is whole characters (a byte piece decodes to ``�``)."""
    return bool(token) and "\ufffd" not in token
