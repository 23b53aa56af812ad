"""Activation patching: which activations carry the difference between two prompts?

Run the model on a *clean* prompt that shows a behaviour ("When Mary and John went to the store,
John gave a drink to" → " Mary") and on a *corrupted* prompt that differs minimally and does not
(the second "John" replaced by another name). Then run one of them again with a single activation
taken from the other run and measure the behaviour with a metric (here the logit difference
" Mary" − " John"):

- ``direction="denoise"``: the corrupted run with one clean activation patched in. A site whose
  clean value restores the behaviour is *sufficient* to carry the difference.
- ``direction="noise"``: the clean run with one corrupted activation patched in. A site whose
  corrupted value breaks the behaviour is *necessary*.

The normalized effect ``(patched - corrupted) / (clean - corrupted)`` puts every site on one scale:
1 = the patched run behaves like the clean run, 0 = like the corrupted one.

``patch`` sweeps many sites at once (every head, every layer, every position) and runs them in
batches of variants (``mechlab.interventions.runner``), each batch resumed at the first layer it
patches, so a sweep over all heads costs a fraction of one forward pass per head.

    >>> import mechlab, torch
    >>> model = mechlab.load_model("toy:tiny").model
    >>> clean, corrupted = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 5, 4]])
    >>> result = mechlab.patch(model, clean, corrupted, "resid_pre", mechlab.LogitDiff(7, 9))
    >>> result.axes, [round(x, 4) for x in result.normalized.tolist()], result.mode
    (('layer',), [1.0, 1.0], 'resume')
"""

import dataclasses
import time
from typing import Any

from torch import Tensor

from mechlab.activations import capture
from mechlab.executors import Executor
from mechlab.interventions.inputs import (
    Ablation,
    Direction,
    TokensLike,
    pos_labels,
    shared_prefix,
    split_pair,
)
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
from mechlab.sites import Site
from mechlab.types import HookedModel, Tokens

DEFAULT_BATCH_SIZE = 32


def patch(
    model: HookedModel,
    clean: TokensLike,
    corrupted: TokensLike | Ablation,
    sites: SitesLike,
    metric: MetricLike,
    *,
    direction: Direction | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    executor: Executor | str | None = None,
) -> PatchResult:
    """Patch each site (or group of sites) from one run into the other and score the result.

    Args:
        model: a HookedTransformer-protocol model.
        clean: the prompt(s) showing the behaviour: token ids ``[batch, pos]`` or text.
        corrupted: prompt(s) of the same token shape that do not, or an ``Ablation`` (zero/mean).
        sites: ``Sweep(...)``, a kind (``"z"``: every head; ``"resid_pre"``: every layer), a site
            string (``"z.9.6@-1"``), a ``Site``, or a list of Sites / groups of Sites.
        metric: ``logits -> [batch]`` (``LogitDiff``, ``AnswerProb``, ``KLFromReference``, or any
            callable).
        direction: ``"denoise"`` patches clean activations into the corrupted run; ``"noise"``
            patches corrupted activations into the clean run. Default: ``"denoise"``, or
            ``"noise"`` when ``corrupted`` is an ``Ablation`` (the only direction it allows).
        batch_size: rows (variants × prompts) per forward pass.
        progress: called with a ``SweepProgress`` (``done``/``total`` variants) after each batch
            of variants, e.g. ``mechlab.RichProgress()``.
        executor: runs the batches of variants (``mechlab.executors``; default: in this process).

    Returns:
        A ``PatchResult`` on the sweep's grid with clean and corrupted baselines.

    Raises:
        InputError: clean and corrupted have different token shapes (with an aligned view).
        SiteError: a site the model does not have, or a kind that cannot be patched.
    """
    started = time.perf_counter()
    clean_tokens, corrupted_tokens, ablation, direction = split_pair(model, clean, corrupted, direction)
    plan = resolve(model, sites, pos_labels(model, clean_tokens[0]))
    score = scorer(metric, int(clean_tokens.shape[1]))
    denoise = direction == "denoise"
    target_tokens = corrupted_tokens if denoise and corrupted_tokens is not None else clean_tokens
    work = Patching(
        model,
        plan,
        score,
        target_tokens,
        None if ablation is not None else clean_tokens if denoise else corrupted_tokens,
        ablation,
        prefix=0 if corrupted_tokens is None else shared_prefix(clean_tokens, corrupted_tokens),
    )
    runner, _, source_logits = work.state()
    if source_logits is None:
        clean_logits, corrupted_logits = runner.logits, None
    else:
        pair = (source_logits, runner.logits)
        clean_logits, corrupted_logits = pair if denoise else pair[::-1]

    values = variant_values(plan, int(target_tokens.shape[0]))
    # Variants confined to the shared prefix change nothing: they score as the unpatched run.
    idle = {
        i for i, v in enumerate(plan.variants) if all(s.pos is not None and s.pos < runner.offset for s in v)
    }
    values[sorted(idle)] = score.baseline(runner.logits).to(values)
    todo = [i for i in range(len(plan.variants)) if i not in idle]
    run_chunks(values, todo, work.starts, batch_size, work, progress, executor)
    return PatchResult.from_plan(
        plan,
        values,
        score.baseline(clean_logits),
        None if corrupted_logits is None else score.baseline(corrupted_logits),
        direction=direction,
        method="activation",
        metric=score.describe(),
        seconds=time.perf_counter() - started,
        mode=runner.mode,
    )


@dataclasses.dataclass(eq=False)
class Patching:
    """The work of every ``patch`` task: score a batch of variants (``__call__``).

    It holds what the sweep is (the model, the plan, the metric, the target run's tokens and where
    the patched values come from), and builds the unpatched target run and the source activations
    once per process (``state``), on first use: the driver builds them for the baselines and its
    tasks reuse them; a worker elsewhere receives the description (pickled without them) and builds
    its own copy.
    """

    model: HookedModel
    plan: Plan
    score: Scorer
    target: Tokens
    source: Tokens | None  # the run patched values come from; ``None``: the ablation of the target
    ablation: Ablation | None
    prefix: int
    _state: tuple[Runner, dict[Site, Tensor], Tensor | None] | None = dataclasses.field(
        default=None, repr=False
    )

    @property
    def starts(self) -> list[int | None]:
        return [start_layer(v) for v in self.plan.variants]

    def state(self) -> tuple[Runner, dict[Site, Tensor], Tensor | None]:
        """The target run, the source activations by whole site, and the source run's logits
        (``None`` for an ablation)."""
        if self._state is None:
            hook_sites = whole_sites(self.plan)
            runner = Runner(
                self.model,
                self.target,
                keep=hook_sites if self.ablation else [],
                positions=self.score.positions,
                resume_layers=[s for s in self.starts if s is not None],
                prefix=self.prefix,
            )
            if self.ablation is not None:
                sources = {s: self.ablation.source(runner.reference[s], s.pos_axis) for s in hook_sites}
                self._state = (runner, sources, None)
            else:
                assert self.source is not None
                source = capture(self.model, self.source, hook_sites, max_bytes=None)
                assert source.logits is not None
                self._state = (runner, {s: source[s] for s in hook_sites}, source.logits)
        return self._state

    def __call__(self, chunk: list[int], start: int | None) -> Tensor:
        """Scores ``[len(chunk), batch]`` of the variants ``chunk``, which change block ``start`` first."""
        runner, sources, _ = self.state()
        replacements = [[Replacement(s, sources[s.whole]) for s in self.plan.variants[i]] for i in chunk]
        logits, _ = runner.run(replacements, start)
        assert logits is not None
        return self.score(logits)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}
