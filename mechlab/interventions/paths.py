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

``direction="denoise"`` swaps the roles: the corrupted run with clean sender outputs. Senders are
given as for ``patch`` (usually ``"z"``: every head) and run in batches like ``patch``.

Freezing decides which sites make sense. Senders must be component *outputs* whose change survives
the freezing: head outputs ``z``, ``attn_out``, ``mlp_out``, the residual stream and ``embed`` (not
``q``/``k``/``v``/``pattern``, whose head output is frozen, nor ``mlp_pre``/``mlp_post`` when MLPs
are frozen). Receivers must be component *inputs* the first run recomputes: ``q``/``k``/``v``/
``pattern`` of a head, ``mlp_pre`` and the residual stream (not ``z``/``attn_out``, which are frozen).
Other kinds raise ``SiteError`` rather than return zeros. A sender after every receiver cannot reach
them and scores as the unpatched run.
"""

import dataclasses
import time
from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from mechlab.activations import Activations, capture
from mechlab.errors import MSG_PATH_RECEIVER, MSG_PATH_SENDER, SiteError
from mechlab.executors import Executor
from mechlab.interventions.inputs import (
    Direction,
    TokensLike,
    check_direction,
    check_pair,
    pos_labels,
    shared_prefix,
)
from mechlab.interventions.patching import DEFAULT_BATCH_SIZE
from mechlab.interventions.result import PatchResult
from mechlab.interventions.runner import Replacement, Runner
from mechlab.interventions.scoring import MetricLike, Scorer, scorer
from mechlab.interventions.sweep import (
    Plan,
    SitesLike,
    resolve,
    run_chunks,
    start_layer,
    variant_values,
    whole_sites,
)
from mechlab.progress import Progress
from mechlab.sites import RESID_KINDS, Site
from mechlab.types import HookedModel

Receivers = Literal["logits"] | Sequence[Site | str]
SENDER_KINDS: tuple[str, ...] = ("z", "attn_out", "mlp_out", "embed", *RESID_KINDS)
RECEIVER_KINDS: tuple[str, ...] = ("q", "k", "v", "pattern", "mlp_pre", *RESID_KINDS)


def _sender_problem(site: Site, freeze_mlps: bool) -> str | None:
    if site.kind in SENDER_KINDS:
        return None
    if site.kind in ("q", "k", "v", "pattern"):
        return f"the head outputs z of layer {site.layer} are frozen, which erases its effect; send from z."
    if site.kind in ("mlp_pre", "mlp_post") and freeze_mlps:
        return "every MLP output is frozen, which erases its effect; send from mlp_out."
    if site.kind in ("mlp_pre", "mlp_post"):
        return "send from mlp_out, the MLP's output (the same change, seen from outside the MLP)."
    return f"{site.kind!r} is not a component output."


def _receiver_problem(site: Site, freeze_mlps: bool) -> str | None:
    if site.kind in RECEIVER_KINDS:
        return None
    if site.kind in ("z", "attn_out") or (site.kind == "mlp_out" and freeze_mlps):
        return "it is frozen in the first run, so it never carries a sender's effect."
    if site.kind in ("mlp_out", "mlp_post"):
        return "an MLP receives at its input; receive at mlp_pre."
    return f"{site.kind!r} is not a component input."


def _check_senders(plan: Plan, freeze_mlps: bool) -> None:
    for site in (s for variant in plan.variants for s in variant):
        if (reason := _sender_problem(site, freeze_mlps)) is not None:
            raise SiteError(MSG_PATH_SENDER.format(site=site, reason=reason, allowed=", ".join(SENDER_KINDS)))


def _receivers(
    model: HookedModel, receivers: Receivers, labels: list[str], freeze_mlps: bool
) -> list[Site] | None:
    if isinstance(receivers, str):
        if receivers != "logits":
            raise SiteError(f"receivers must be 'logits' or a list of Sites, got {receivers!r}.")
        return None
    sites = [Site.parse(r) if isinstance(r, str) else r for r in receivers]
    if not sites:
        raise SiteError("No receivers: pass 'logits' or Sites such as Site('q', 20, 0).")
    for site in sites:
        if (reason := _receiver_problem(site, freeze_mlps)) is not None:
            allowed = ", ".join(RECEIVER_KINDS)
            raise SiteError(MSG_PATH_RECEIVER.format(site=site, reason=reason, allowed=allowed))
    return [variant[0] for variant in resolve(model, sites, labels).variants]


def _frozen(start: int, last: int, freeze_mlps: bool) -> list[Site]:
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
    executor: Executor | str | None = None,
) -> PatchResult:
    """Patch each sender along the direct path to ``receivers`` only, and score the result.

    Args:
        model: a HookedTransformer-protocol model.
        clean: prompt(s) showing the behaviour (token ids or text).
        corrupted: prompt(s) of the same token shape that do not.
        senders: as ``patch``'s ``sites`` (``"z"``: every head, one at a time); kinds
            ``SENDER_KINDS``.
        receivers: ``"logits"`` (the final residual stream), or Sites whose inputs receive the
            senders' effect, e.g. ``[Site("q", 20, 0), Site("k", 20, 0), Site("v", 20, 0)]``;
            ``pos`` restricts a receiver to one position; kinds ``RECEIVER_KINDS``.
        metric: as for ``patch``.
        direction: ``"noise"`` (clean run, corrupted senders; Wang et al.) or ``"denoise"``.
        freeze_mlps: also freeze MLP outputs, so only the residual stream carries the effect.
        batch_size, progress: as for ``patch``.

    Returns:
        A ``PatchResult`` over the senders (``method="path"``; ``context`` names the receivers).

    Raises:
        SiteError: a sender or receiver whose effect the freezing would erase (see above).
    """
    started = time.perf_counter()
    direction = check_direction(direction, False)
    clean_tokens, corrupted_tokens = check_pair(model, clean, corrupted)
    labels = pos_labels(model, clean_tokens[0])
    plan = resolve(model, senders, labels)
    _check_senders(plan, freeze_mlps)
    targets = _receivers(model, receivers, labels, freeze_mlps)
    score = scorer(metric, len(labels))
    starts = [start_layer(v) for v in plan.variants]
    last = plan.n_layers - 1 if targets is None else max(int(r.layer or 0) for r in targets)
    receive_at = None if targets is None else min(int(r.layer or 0) for r in targets)

    runs = (clean_tokens, corrupted_tokens)
    base_tokens, source_tokens = runs if direction == "noise" else runs[::-1]
    runner = Runner(
        model,
        base_tokens,
        keep=_frozen(0, last, freeze_mlps),
        positions=score.positions,
        resume_layers=[*(s for s in starts if s is not None), *([] if receive_at is None else [receive_at])],
        prefix=shared_prefix(clean_tokens, corrupted_tokens),
    )
    source = capture(model, source_tokens, whole_sites(plan), max_bytes=None)
    assert source.logits is not None
    values = variant_values(plan, int(base_tokens.shape[0]))
    runs_of = _PathRuns(runner, plan, source, targets, last, freeze_mlps, score)
    run_chunks(values, range(len(plan.variants)), starts, batch_size, runs_of, progress, executor)
    baselines = (score.baseline(runner.logits), score.baseline(source.logits))
    named = "logits" if targets is None else ", ".join(str(r) for r in targets)
    return PatchResult.from_plan(
        plan,
        values,
        *(baselines if direction == "noise" else baselines[::-1]),
        direction=direction,
        method="path",
        metric=score.describe(),
        seconds=time.perf_counter() - started,
        context=f"senders → {named}" + (", MLPs frozen" if freeze_mlps else ""),
        mode=runner.mode,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class _PathRuns:
    """The two runs of path patching for a chunk of senders (see the module docstring)."""

    runner: Runner
    plan: Plan
    source: Activations
    targets: list[Site] | None
    last: int
    freeze_mlps: bool
    score: Scorer

    def __call__(self, chunk: list[int], start: int | None) -> Tensor:
        """Scores ``[len(chunk), batch]`` of the senders ``chunk``, which change block ``start`` first."""
        runner = self.runner
        frozen = [
            Replacement(s, runner.reference[s]) for s in _frozen(start or 0, self.last, self.freeze_mlps)
        ]
        step1 = [
            frozen + [Replacement(s, self.source[s.whole]) for s in self.plan.variants[i]] for i in chunk
        ]
        if self.targets is None:
            logits, _ = runner.run(step1, start)
            assert logits is not None
            return self.score(logits)
        # Receivers before the chunk's first patched block are not reached: they keep the
        # unpatched values, and a chunk that reaches none scores as the unpatched run.
        reached = [r for r in self.targets if start is None or int(r.layer or 0) >= start]
        if not reached:
            return self.score.baseline(runner.logits).expand(len(chunk), -1)
        _, seen = runner.run(step1, start, capture=[r.whole for r in reached], logits=False)
        step2 = [
            [Replacement(r, seen[r.whole][v], offset=runner.offset) for r in reached]
            for v in range(len(chunk))
        ]
        logits, _ = runner.run(step2, min(int(r.layer or 0) for r in self.targets))
        assert logits is not None
        return self.score(logits)
