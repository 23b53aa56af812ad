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
from mechlab.hooks import hooked, recorder
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
    document separator; nothing for a model without a tokenizer), with the activation (only tokens
    that activate it at all)."""
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
    from mechlab.dictionaries.corpus import separator_id

    if prefix is None:
        tokenizer = getattr(model, "tokenizer", None)
        prefix = [] if tokenizer is None else [separator_id(tokenizer)]
    device = torch.device(model.cfg.device)
    latents = {layer: graph.active_features[nodes, 2].to(device) for layer, nodes in wanted.items()}
    best = {layer: torch.zeros(len(nodes), 0, device=device) for layer, nodes in wanted.items()}
    best_ids = {layer: best[layer].long() for layer in wanted}
    vocab = int(model.cfg.d_vocab)
    sites = {layer: Site("mlp_in", layer) for layer in wanted}
    with torch.no_grad():
        for start in range(0, vocab, batch_size):
            ids = torch.arange(start, min(vocab, start + batch_size), device=device)
            before = torch.tensor(list(prefix), dtype=torch.long, device=device)
            batch = torch.cat([before.expand(len(ids), -1), ids[:, None]], 1)
            acts: dict[Site, torch.Tensor] = {}
            with hooked(model, {site: recorder(acts) for site in sites.values()}):
                model(batch, stop_at_layer=max(wanted) + 1)
            for layer, site in sites.items():
                z = transcoders[layer].encode(acts[site][:, -1].to(device))[:, latents[layer]].T.float()
                values = torch.cat([best[layer], z], 1)
                order = values.topk(min(k, values.shape[1]), dim=1)
                best[layer] = order.values
                candidates = torch.cat([best_ids[layer], ids.expand(len(z), -1)], 1)
                best_ids[layer] = candidates.gather(1, order.indices)
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
        excited = [visible(token).strip() or visible(token) for token, _ in (inputs or {}).get(index, ())]
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
    return [visible(c.tokens[c.peak]).strip() or visible(c.tokens[c.peak]) for c in contexts]


def _readable(token: str) -> bool:
    """Whether a token's text is whole characters (a byte piece decodes to ``�``)."""
    return bool(token) and "\ufffd" not in token
