"""Path patching: how much of an effect flows from *sender* components directly into *receivers*?

Activation patching a head measures everything downstream of it. Path patching (Wang et al. 2022,
"Interpretability in the Wild") isolates one route: the effect of the senders' outputs that reaches
the receivers directly through the residual stream, not through other attention heads.

With ``direction="noise"`` (Wang et al.'s setting), for each sender:

1. Run the clean prompt with the sender's output taken from the corrupted run and every other
   attention head's output frozen to its clean value (MLPs recompute, or are frozen too with
   ``freeze_mlps=True``). Record the receivers' inputs: the queries/keys/values of receiver heads
   (``Site("q", 20, 0)``…), or the final residual stream (``receivers="logits"``).
2. Run the clean prompt again with only the receivers' inputs replaced by those values, and score
   it with the metric (for ``"logits"`` the first run's output is the answer).

``direction="denoise"`` swaps the roles: the corrupted run with clean sender outputs. Senders can
be anything ``patch`` accepts (usually ``"z"``: every head), and run in batches like ``patch``.
"""

import time
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from mechlab.capture import capture
from mechlab.errors import SiteError
from mechlab.interventions.inputs import Direction, TokensLike, check_direction, check_pair
from mechlab.interventions.patching import (
    DEFAULT_BATCH_SIZE,
    Progress,
    full_site,
    make_result,
    pos_labels,
    run_chunks,
    shared_prefix,
)
from mechlab.interventions.result import PatchResult
from mechlab.interventions.runner import Replacement, Runner
from mechlab.interventions.scoring import MetricLike, scorer
from mechlab.interventions.sweep import PATCHABLE_KINDS, SitesLike, resolve, start_layer
from mechlab.sites import Site, validate
from mechlab.types import HookedModel

Receivers = Literal["logits"] | Sequence[Site | str]


def _receivers(model: HookedModel, receivers: Receivers, n_pos: int) -> list[Site] | None:
    if isinstance(receivers, str):
        if receivers != "logits":
            raise SiteError(f"receivers must be 'logits' or a list of Sites, got {receivers!r}.")
        return None
    sites = [Site.parse(r) if isinstance(r, str) else r for r in receivers]
    if not sites:
        raise SiteError("No receivers: pass 'logits' or Sites such as Site('q', 20, 0).")
    out = []
    for site in sites:
        if site.kind not in PATCHABLE_KINDS or site.kind == "embed":
            raise SiteError(f"Receiver {site} must be a per-layer patchable kind (q/k/v of a head, …).")
        if site.pos is not None and not -n_pos <= site.pos < n_pos:
            raise SiteError(f"Receiver {site} names position {site.pos}, but the prompts have {n_pos}.")
        out.append(validate(site if site.pos is None else site.with_(pos=site.pos % n_pos), model))
    return out


def _frozen(model: HookedModel, start: int, last: int, freeze_mlps: bool) -> list[Site]:
    kinds = ["z", "mlp_out"] if freeze_mlps else ["z"]
    return [Site(kind, layer) for layer in range(start, last + 1) for kind in kinds]


def path_patch(
    model: HookedModel,
    clean: TokensLike,
    corrupted: TokensLike,
    senders: SitesLike,
    receivers: Receivers,
    metric: MetricLike,
    *,
    direction: Direction = "noise",
    freeze_mlps: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> PatchResult:
    """Patch each sender along the direct path to ``receivers`` only, and score the result.

    Args:
        model: a HookedTransformer-protocol model.
        clean: prompt(s) showing the behaviour (token ids or text).
        corrupted: prompt(s) of the same token shape that do not.
        senders: as ``patch``'s ``sites`` (``"z"``: every head, one at a time).
        receivers: ``"logits"`` (the final residual stream), or Sites whose inputs receive the
            senders' effect, e.g. ``[Site("q", 20, 0), Site("k", 20, 0), Site("v", 20, 0)]``;
            ``pos`` restricts a receiver to one position.
        metric: as for ``patch``.
        direction: ``"noise"`` (clean run, corrupted senders; Wang et al.) or ``"denoise"``.
        freeze_mlps: also freeze MLP outputs, so only the residual stream carries the effect.
        batch_size, progress: as for ``patch``.

    Returns:
        A ``PatchResult`` over the senders (``method="path"``; ``context`` names the receivers).
    """
    started = time.perf_counter()
    check_direction(direction, False)
    clean_tokens, corrupted_tokens = check_pair(model, clean, corrupted)
    n_pos, n_layers = int(clean_tokens.shape[1]), int(model.cfg.n_layers)
    plan = resolve(model, senders, pos_labels(model, clean_tokens[0]))
    targets = _receivers(model, receivers, n_pos)
    score = scorer(metric, n_pos)
    starts = [start_layer(v) for v in plan.variants]
    last = n_layers - 1 if targets is None else max(int(r.layer or 0) for r in targets)
    receive_at = None if targets is None else min(int(r.layer or 0) for r in targets)

    noise = direction == "noise"
    runs = (clean_tokens, corrupted_tokens)
    base_tokens, source_tokens = runs if noise else runs[::-1]
    runner = Runner(
        model,
        base_tokens,
        keep=_frozen(model, 0, last, freeze_mlps),
        positions=score.positions,
        resume_layers=[*(s for s in starts if s is not None), *([] if receive_at is None else [receive_at])],
        prefix=shared_prefix(clean_tokens, corrupted_tokens),
    )
    sender_sites = list(dict.fromkeys(full_site(s) for variant in plan.variants for s in variant))
    source = capture(model, source_tokens, sender_sites, max_bytes=None)
    assert source.logits is not None
    pair = (runner.logits, source.logits)
    clean_logits, corrupted_logits = pair if noise else pair[::-1]

    def evaluate(chunk: list[int], start: int | None) -> Tensor:
        frozen = [Replacement(s, runner.reference[s]) for s in _frozen(model, start or 0, last, freeze_mlps)]
        step1 = [frozen + [Replacement(s, source[full_site(s)]) for s in plan.variants[i]] for i in chunk]
        if targets is None:
            logits, _ = runner.run(step1, start)
        else:
            _, seen = runner.run(step1, start, capture=[full_site(r) for r in targets], logits=False)
            step2 = [
                [Replacement(r, seen[full_site(r)][v], offset=runner.offset) for r in targets]
                for v in range(len(chunk))
            ]
            logits, _ = runner.run(step2, receive_at)
        assert logits is not None
        return score(logits)

    values = torch.empty(len(plan.variants), int(base_tokens.shape[0]))
    run_chunks(values, range(len(plan.variants)), starts, batch_size, evaluate, progress)
    named = "logits" if targets is None else ", ".join(str(r) for r in targets)
    return make_result(
        plan,
        values,
        score.baseline(clean_logits),
        score.baseline(corrupted_logits),
        direction,
        "path",
        metric=score.describe(),
        seconds=time.perf_counter() - started,
        context=f"senders → {named}" + (", MLPs frozen" if freeze_mlps else ""),
    )
