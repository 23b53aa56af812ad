"""Attribution graphs: direct effects between tokens, features, errors and logits.

Nodes, in circuit-tracer's order (rows are targets, columns sources of the adjacency matrix):

1. active features ``(layer, pos, feature)`` (those whose rows were computed: ``selected``);
2. error nodes, one per ``(layer, pos)``, layer-major;
3. token nodes, one per position;
4. logit nodes: the top next tokens at the last position covering ``desired_logit_prob`` (at most
   ``max_n_logits``), each the token's logit minus the mean logit; or one given token; or one
   logit difference.

Algorithm (one row per target, ``batch_size`` rows per forward/backward pass of the replacement
model, so memory stays bounded):

1. Run the real model, freeze patterns/norms, encode each MLP input (``replacement.capture_run``).
2. Logit rows: the gradient of each logit node's value reaches each source site; the edge from a
   source is ``gradient · source vector`` (a feature's vector is its activation times its decoder
   row; an error node's the error vector; a token's its embedding).
3. Feature rows: the same with the feature's pre-activation (encoder row · ``mlp_in``) as value.
   With ``max_feature_nodes`` set, features are visited in order of their influence on the logits
   estimated from the rows computed so far (circuit-tracer's ordering); the rest are dropped.

Because the replacement model is affine in its sources, each row plus the bias offset sums to the
target's value exactly (completeness of the linear decomposition; ``tests`` check it).
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.dictionaries.transcoder import Transcoder
from mechlab.errors import InputError
from mechlab.graphs.graph import AttributionGraph
from mechlab.graphs.prune import normalize_matrix
from mechlab.graphs.replacement import ReplacementRun, Sources, capture_run, replacement_forward
from mechlab.hooks import SiteHook
from mechlab.progress import Progress, Step
from mechlab.sites import Site
from mechlab.tokens import as_tokens, single_token, str_tokens, token_text
from mechlab.types import HookedModel

TargetSpec = None | str | int | tuple[str | int, str | int]


@dataclasses.dataclass(frozen=True)
class _Target:
    kind: str  # "logit" | "feature"
    pos: int
    layer: int = -1
    feature: int = -1
    direction: Tensor | None = None  # over the vocabulary, for logit nodes


def _logit_targets(
    model: HookedModel,
    logits: Float[Tensor, " d_vocab"],
    target: TargetSpec,
    max_n_logits: int,
    desired: float,
) -> tuple[list[Tensor], list[int], list[str], Tensor]:
    """Directions over the vocabulary, token ids, labels and weights of the logit nodes."""
    probs = torch.softmax(logits.double(), dim=-1).float()
    d_vocab = logits.shape[-1]

    def demeaned(token: int) -> Tensor:
        direction = torch.full((d_vocab,), -1.0 / d_vocab)
        direction[token] += 1.0
        return direction

    if target is None:
        top = torch.topk(probs, max_n_logits)
        cut = int(torch.searchsorted(torch.cumsum(top.values, 0), torch.tensor(desired))) + 1
        ids = [int(t) for t in top.indices[: min(cut, max_n_logits)]]
        labels = [_label(model, t) for t in ids]
        return [demeaned(t) for t in ids], ids, labels, probs[ids]
    if isinstance(target, tuple):
        if len(target) != 2:
            raise InputError(f"A logit-difference target is (token, contrast); got {target!r}.")
        good, bad = (single_token(model, t) for t in target)
        direction = torch.zeros(d_vocab)
        direction[good], direction[bad] = 1.0, -1.0
        label = f"{_label(model, good)} − {_label(model, bad)}"
        return [direction], [good, bad], [label], torch.ones(1)
    token = single_token(model, target)
    return [demeaned(token)], [token], [_label(model, token)], torch.ones(1)


def _label(model: HookedModel, token: int) -> str:
    try:
        return token_text(model, token)
    except InputError:
        return f"#{token}"


def _rows(
    model: HookedModel,
    run: ReplacementRun,
    transcoders: Mapping[int, Transcoder],
    targets: Sequence[_Target],
    sources: tuple[Tensor, Tensor, dict[int, Tensor]],
    *,
    scale: float = 1.0,
) -> tuple[Float[Tensor, "batch n_cols"], Float[Tensor, " batch"]]:
    """The rows (direct effects of every source) and values of ``targets``, one batched pass.

    ``sources``: (features [n, 3], their decoder vectors scaled by activation [n, d_model], and per
    layer the node indices of its features).
    """
    features, vectors, by_layer = sources
    batch, n_pos, n_layers = len(targets), run.n_pos, run.errors.shape[0]
    state = Sources(batch=batch, scale=scale)
    values: list[Tensor] = []
    by_feature_layer: dict[int, list[tuple[int, _Target]]] = {}
    for b, t in enumerate(targets):
        if t.kind == "feature":
            by_feature_layer.setdefault(t.layer, []).append((b, t))

    def read_pre(layer: int) -> SiteHook:
        tc = transcoders[layer]

        def hook(act: Tensor, _site: Site) -> None:
            rows = torch.tensor([b for b, _ in by_feature_layer[layer]])
            pos = torch.tensor([t.pos for _, t in by_feature_layer[layer]])
            feats = torch.tensor([t.feature for _, t in by_feature_layer[layer]])
            pre = tc.pre_activation(act[rows, pos])  # [n, d_sae]
            values.append(
                torch.zeros(batch, dtype=pre.dtype).index_add(0, rows, pre[torch.arange(len(rows)), feats])
            )

        return hook

    extra = [(Site("mlp_in", layer), read_pre(layer)) for layer in by_feature_layer]
    logits = replacement_forward(model, run, transcoders, state, extra)
    directions = torch.stack(
        [t.direction if t.direction is not None else torch.zeros(logits.shape[-1]) for t in targets]
    ).to(logits)
    is_logit = torch.tensor([t.kind == "logit" for t in targets])
    total = torch.where(is_logit, (logits[:, -1] * directions).sum(-1), torch.zeros((), dtype=logits.dtype))
    for value in values:
        total = total + value.to(total.dtype)
    grads = torch.autograd.grad(total.sum(), list(state.leaves.values()), allow_unused=True)
    grad = {
        site: g if g is not None else torch.zeros_like(leaf)
        for (site, leaf), g in zip(state.leaves.items(), grads, strict=True)
    }
    n_features = len(features)
    rows = torch.zeros(batch, n_features + n_layers * n_pos + n_pos)
    for layer in range(n_layers):
        g = grad[Site("mlp_out", layer)].float()  # [batch, pos, d_model]
        if layer in by_layer:
            idx = by_layer[layer]
            rows[:, idx] = (g[:, features[idx, 1]] * vectors[idx]).sum(-1)
        start = n_features + layer * n_pos
        rows[:, start : start + n_pos] = (g * run.errors[layer]).sum(-1)
    token = (grad[Site("embed")].float() * run.embed).sum(-1)
    if run.pos_embed is not None:
        token = token + (grad[Site("pos_embed")].float() * run.pos_embed).sum(-1)
    rows[:, n_features + n_layers * n_pos :] = token
    return rows, total.detach().float()


def attribute(
    model: HookedModel,
    transcoders: Mapping[int, Transcoder],
    prompt: str | Tensor,
    *,
    target: TargetSpec = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> AttributionGraph:
    """The attribution graph of ``model``'s next-token prediction on ``prompt``.

    Args:
        model: the model (HookedTransformer protocol).
        transcoders: ``{layer: Transcoder}``; layers without one are frozen (all error).
        prompt: text (needs a tokenizer) or token ids ``[pos]`` / ``[1, pos]``.
        target: ``None`` (top logits), a token (text or id), or ``(token, contrast)`` for a logit
            difference.
        max_n_logits, desired_logit_prob: the top logits kept (``target=None``).
        max_feature_nodes: compute rows for at most this many features, in order of influence
            (``None``: every active feature).
        batch_size: rows per forward/backward pass (memory grows linearly with it).
        progress: called with ``Step(done, total)`` after each pass.

    Returns:
        The ``AttributionGraph``.
    """
    if batch_size < 1 or (max_feature_nodes is not None and max_feature_nodes < 0):
        raise InputError(
            f"batch_size must be ≥ 1 and max_feature_nodes ≥ 0 or None; "
            f"got {batch_size}, {max_feature_nodes}."
        )
    if not 0 < desired_logit_prob <= 1 or max_n_logits < 1:
        raise InputError(
            f"desired_logit_prob must be in (0, 1] and max_n_logits ≥ 1; "
            f"got {desired_logit_prob}, {max_n_logits}."
        )
    tokens = as_tokens(model, prompt).to(torch.long)
    run = capture_run(model, transcoders, tokens)
    transcoders = dict(transcoders)
    n_layers, n_pos = run.errors.shape[0], run.n_pos

    # Active features and their decoder vectors (activation × decoder row, as decode adds it).
    found: list[Tensor] = []
    vectors: list[Tensor] = []
    values: list[Tensor] = []
    with torch.no_grad():
        for layer, z in run.activations.items():
            pos, feat = (z != 0).nonzero(as_tuple=True)
            tc = transcoders[layer]
            act = z[pos, feat]
            one = torch.zeros(len(feat), tc.cfg.d_sae, dtype=z.dtype)
            one[torch.arange(len(feat)), feat] = act
            vec = tc.decode(one) - tc.decode(torch.zeros(1, tc.cfg.d_sae, dtype=z.dtype))
            found.append(torch.stack([torch.full_like(pos, layer), pos, feat], dim=1))
            vectors.append(vec.float())
            values.append(act.float())
    features = torch.cat(found) if found else torch.zeros(0, 3, dtype=torch.long)
    vecs = torch.cat(vectors) if vectors else torch.zeros(0, model.cfg.d_model)
    acts = torch.cat(values) if values else torch.zeros(0)
    by_layer = {
        layer: (features[:, 0] == layer).nonzero(as_tuple=True)[0]
        for layer in transcoders
        if bool((features[:, 0] == layer).any())
    }
    n_active = len(features)
    n_cols = n_active + n_layers * n_pos + n_pos

    directions, logit_ids, labels, weights = _logit_targets(
        model, run.logits[-1].detach(), target, max_n_logits, desired_logit_prob
    )
    logit_targets = [_Target("logit", n_pos - 1, direction=d) for d in directions]
    budget = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    total_passes = -(-len(logit_targets) // batch_size) + -(-budget // batch_size)
    done = 0
    src = (features, vecs, by_layer)

    logit_rows: list[Tensor] = []
    logit_values: list[Tensor] = []
    for start in range(0, len(logit_targets), batch_size):
        rows, vals = _rows(model, run, transcoders, logit_targets[start : start + batch_size], src)
        logit_rows.append(rows)
        logit_values.append(vals)
        done += 1
        if progress is not None:
            progress(Step(done=done, total=total_passes))
    logit_matrix = torch.cat(logit_rows)

    feature_rows = torch.zeros(n_active, n_cols)
    visited = torch.zeros(n_active, dtype=torch.bool)
    while int(visited.sum()) < budget:
        take = min(batch_size, budget - int(visited.sum()))
        if budget == n_active:
            chosen = (~visited).nonzero(as_tuple=True)[0][:take]
        else:
            influence = _feature_influence(logit_matrix, weights, feature_rows, visited, n_active)
            influence[visited] = -1.0
            chosen = torch.topk(influence, take).indices
        batch = [
            _Target("feature", int(features[i, 1]), layer=int(features[i, 0]), feature=int(features[i, 2]))
            for i in chosen
        ]
        rows, _ = _rows(model, run, transcoders, batch, src)
        feature_rows[chosen] = rows
        visited[chosen] = True
        done += 1
        if progress is not None:
            progress(Step(done=done, total=total_passes))

    # Square adjacency over the selected features, errors, tokens and logits.
    keep = visited.nonzero(as_tuple=True)[0]
    cols = torch.cat([keep, torch.arange(n_active, n_cols)])
    n_sel, n_logit = len(keep), len(logit_targets)
    n_nodes = n_sel + n_layers * n_pos + n_pos + n_logit
    adjacency = torch.zeros(n_nodes, n_nodes)
    adjacency[:n_sel, : n_cols - n_active + n_sel] = feature_rows[keep][:, cols]
    adjacency[n_nodes - n_logit :, : n_cols - n_active + n_sel] = logit_matrix[:, cols]
    for t in transcoders.values():
        t.zero_grad(set_to_none=True)
    return AttributionGraph(
        prompt=prompt if isinstance(prompt, str) else " ".join(str(int(t)) for t in tokens[0]),
        input_tokens=tokens[0].clone(),
        token_strings=_token_strings(model, tokens),
        active_features=features[keep],
        activation_values=acts[keep],
        adjacency=adjacency,
        logit_tokens=torch.tensor(logit_ids),
        logit_labels=tuple(labels),
        logit_probabilities=weights.float(),
        logit_values=torch.cat(logit_values),
        n_layers=n_layers,
        n_active=n_active,
        model_name=str(getattr(model.cfg, "model_name", "")),
    )


def _token_strings(model: HookedModel, tokens: Tensor) -> tuple[str, ...]:
    try:
        return tuple(str_tokens(model, tokens[0]))
    except InputError:
        return tuple(f"#{int(t)}" for t in tokens[0])


def _feature_influence(
    logit_rows: Tensor, logit_weights: Tensor, feature_rows: Tensor, visited: Tensor, n_active: int
) -> Float[Tensor, " n_active"]:
    """Each active feature's influence on the logits through the rows computed so far (rows of
    unvisited features count as zero): circuit-tracer's partial influence, used to order visits."""
    rows = torch.cat([feature_rows[visited], logit_rows])
    row_nodes = torch.cat([visited.nonzero(as_tuple=True)[0], torch.full((len(logit_rows),), -1)])
    normalized = normalize_matrix(rows)
    mass = torch.cat([torch.zeros(int(visited.sum())), logit_weights.to(rows.dtype)])
    influence = torch.zeros(rows.shape[1])
    for _ in range(256):
        step = mass @ normalized  # influence reaching every column node
        influence += step
        mass = torch.where(row_nodes >= 0, step[row_nodes.clamp_min(0)], torch.zeros(()))
        if not bool(mass.any()):
            break
    return influence[:n_active]


def graph_summary(graph: AttributionGraph) -> dict[str, Any]:
    """Counts for messages: nodes of each kind, active features in all."""
    return {
        "features": graph.n_features,
        "active_features": graph.n_active,
        "error_nodes": graph.n_layers * graph.n_pos,
        "tokens": graph.n_pos,
        "logits": graph.n_logits,
    }
