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
    >>> result.axes, [round(x, 4) for x in result.normalized.tolist()]
    (('layer',), [1.0, 1.0])
"""

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mechlab.capture import capture
from mechlab.interventions.inputs import (
    Ablation,
    Direction,
    TokensLike,
    as_tokens,
    check_direction,
    check_pair,
)
from mechlab.interventions.result import PatchResult
from mechlab.interventions.runner import Replacement, Runner
from mechlab.interventions.scoring import MetricLike, scorer
from mechlab.interventions.sweep import Plan, SitesLike, resolve, start_layer
from mechlab.sites import Site
from mechlab.types import HookedModel, Tokens

Progress = Callable[[int, int], None]
DEFAULT_BATCH_SIZE = 32


def pos_labels(model: HookedModel, row: Tensor) -> list[str]:
    """Per-position labels: the token strings, or ids for models without a tokenizer."""
    if getattr(model, "tokenizer", None) is None:
        return [str(int(t)) for t in row]
    return [str(s) for s in model.to_str_tokens(row)]  # type: ignore[attr-defined]


def full_site(site: Site) -> Site:
    """The site of the whole hooked tensor a (head/pos-sliced) site lives in."""
    return site.with_(head=None, pos=None)


def shared_prefix(clean: Tokens, corrupted: Tokens) -> int:
    """How many leading positions every clean/corrupted pair has in common."""
    differs = (clean != corrupted).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else int(clean.shape[1])


def chunks(starts: Sequence[int | None], rows_per_variant: int, batch_size: int) -> list[list[int]]:
    """Variant indices in forward-sized groups (≤ ``batch_size`` rows), ordered by start layer."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1 (rows per forward pass), got {batch_size}.")
    per_chunk = max(1, batch_size // rows_per_variant)
    order = sorted(range(len(starts)), key=lambda i: -1 if (s := starts[i]) is None else s)
    return [order[i : i + per_chunk] for i in range(0, len(order), per_chunk)]


def chunk_start(starts: Sequence[int | None], chunk: Sequence[int]) -> int | None:
    values = [starts[i] for i in chunk]
    if any(s is None for s in values):
        return None
    return min(s for s in values if s is not None)


Evaluate = Callable[[list[int], int | None], Tensor]


def run_chunks(
    values: Tensor,
    todo: Sequence[int],
    starts: Sequence[int | None],
    batch_size: int,
    evaluate: Evaluate,
    progress: Progress | None,
) -> None:
    """Fill ``values[i]`` (``[batch]`` per variant) for the variants ``todo``, a batch of variants
    at a time: ``evaluate(indices, start_layer) -> [len(indices), batch]``."""
    done = len(values) - len(todo)
    for part in chunks([starts[i] for i in todo], int(values.shape[1]), batch_size):
        chunk = [todo[i] for i in part]
        values[chunk] = evaluate(chunk, chunk_start(starts, chunk))
        done += len(chunk)
        if progress is not None:
            progress(done, len(values))


def split_pair(
    model: HookedModel, clean: TokensLike, corrupted: "TokensLike | Ablation", direction: str
) -> tuple[Tokens, Tokens | None, Ablation | None]:
    """Tokens of both runs (``None`` for an ablation), checked for shape and direction."""
    if isinstance(corrupted, Ablation):
        check_direction(direction, True)
        return as_tokens(model, clean), None, corrupted
    check_direction(direction, False)
    clean_tokens, corrupted_tokens = check_pair(model, clean, corrupted)
    return clean_tokens, corrupted_tokens, None


def make_result(
    plan: Plan,
    values: Tensor,
    clean: Tensor,
    corrupted: Tensor | None,
    direction: str,
    method: str,
    **extra: Any,
) -> PatchResult:
    """A PatchResult from per-variant, per-prompt ``values`` ``[variant, batch]`` and baselines."""
    per_prompt = values.reshape(*plan.shape, values.shape[-1])
    return PatchResult(
        values=per_prompt.mean(-1),
        per_prompt=per_prompt,
        clean=clean,
        corrupted=corrupted,
        axes=plan.axes,
        labels=plan.labels,
        sites=plan.variants,
        direction=direction,
        method=method,
        **extra,
    )


def patch(
    model: HookedModel,
    clean: TokensLike,
    corrupted: TokensLike | Ablation,
    sites: SitesLike,
    metric: MetricLike,
    *,
    direction: Direction = "denoise",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
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
            patches corrupted activations into the clean run.
        batch_size: rows (variants × prompts) per forward pass.
        progress: called as ``progress(done, total)`` after each batch of variants.

    Returns:
        A ``PatchResult`` on the sweep's grid with clean and corrupted baselines.

    Raises:
        InputError: clean and corrupted have different token shapes (with an aligned view).
        SiteError: a site the model does not have, or a kind that cannot be patched.
    """
    started = time.perf_counter()
    clean_tokens, corrupted_tokens, ablation = split_pair(model, clean, corrupted, direction)
    plan = resolve(model, sites, pos_labels(model, clean_tokens[0]))
    score = scorer(metric, int(clean_tokens.shape[1]))
    hook_sites = list(dict.fromkeys(full_site(s) for variant in plan.variants for s in variant))
    starts = [start_layer(v) for v in plan.variants]
    denoise = direction == "denoise"
    target_tokens = corrupted_tokens if denoise and corrupted_tokens is not None else clean_tokens
    runner = Runner(
        model,
        target_tokens,
        keep=hook_sites if ablation else [],
        positions=score.positions,
        resume_layers=[s for s in starts if s is not None],
        prefix=0 if corrupted_tokens is None else shared_prefix(clean_tokens, corrupted_tokens),
    )
    if ablation is not None:
        sources = {s: ablation.source(runner.reference[s]) for s in hook_sites}
        clean_logits, corrupted_logits = runner.logits, None
    else:
        assert corrupted_tokens is not None
        source = capture(model, clean_tokens if denoise else corrupted_tokens, hook_sites, max_bytes=None)
        sources = {s: source[s] for s in hook_sites}
        assert source.logits is not None
        pair = (source.logits, runner.logits)
        clean_logits, corrupted_logits = pair if denoise else pair[::-1]

    def evaluate(chunk: list[int], start: int | None) -> Tensor:
        replacements = [[Replacement(s, sources[full_site(s)]) for s in plan.variants[i]] for i in chunk]
        logits, _ = runner.run(replacements, start)
        assert logits is not None
        return score(logits)

    values = torch.empty(len(plan.variants), int(target_tokens.shape[0]))
    # Variants confined to the shared prefix change nothing: they score as the unpatched run.
    idle = [
        i for i, v in enumerate(plan.variants) if all(s.pos is not None and s.pos < runner.offset for s in v)
    ]
    values[idle] = score.baseline(runner.logits)
    todo = [i for i in range(len(plan.variants)) if i not in set(idle)]
    run_chunks(values, todo, starts, batch_size, evaluate, progress)
    corrupted_metric = None if corrupted_logits is None else score.baseline(corrupted_logits)
    return make_result(
        plan,
        values,
        score.baseline(clean_logits),
        corrupted_metric,
        direction,
        "activation",
        metric=score.describe(),
        seconds=time.perf_counter() - started,
    )
