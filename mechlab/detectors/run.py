"""``run_detectors``: score every head of a model with several detectors over random inputs.

The inputs are ``n_samples`` independent sequences of repeated random tokens (``BOS, r, r``), run
through the model in batches with only the needed activations cached (one forward pass per batch
serves every detector). Each detector scores each sequence; the mean over sequences is reported
with a 95% interval, beside the exact chance level, the shuffled-position baseline and, for
content-dependent detectors, the control score on the same sequences with the second copy shuffled.
Weight detectors are scored once, against at least ``MIN_NULL_DRAWS`` draws of their null.

A detector that raises is reported by name in ``report.failures``; the others' results are kept.
Random draws are seeded per purpose (tokens, control, each detector's baseline), so a detector's
result does not change when other detectors run beside it.
"""

import time
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from mechlab.detectors.base import Detector, DetectorCache, SampleScores
from mechlab.detectors.inputs import (
    check_fits,
    default_bos,
    default_seq_len,
    draw_repeated,
    model_device,
    sampling_vocab,
    shuffle_second_copy,
)
from mechlab.detectors.registry import DetectorRegistry, check_detector
from mechlab.detectors.result import DetectorReport, DetectorResult
from mechlab.errors import DetectorError, DetectorPluginError, InputError, MechlabError
from mechlab.progress import Progress, Step
from mechlab.sites import Site, validate
from mechlab.types import HookedModel, Tokens

# A weight detector's exact score is compared with a 97.5% prediction bound from its null draws;
# 8 draws give the bound 7 degrees of freedom (each draw of copying's null costs ~2.5 s on SmolLM2).
MIN_NULL_DRAWS = 8


def run_detectors(
    model: HookedModel,
    names: str | Sequence[str | Detector] | None = None,
    *,
    n_samples: int = 8,
    seq_len: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    bos: int | None = None,
    registry: DetectorRegistry | None = None,
    progress: Progress | None = None,
) -> DetectorReport:
    """Run detectors on ``model`` and summarise each head's score with an interval and baselines.

    Args:
        model: a HookedTransformer-protocol model.
        names: detector names (or ``Detector`` instances); ``None`` runs every installed detector.
        n_samples: number of independent random sequences (at least 2 for an interval).
        seq_len: length ``n`` of the random block (sequences are ``2n + 1`` tokens);
            default ``default_seq_len(model)``.
        seed: seed of every random draw.
        batch_size: sequences per forward pass (at least 1).
        bos: first token of every sequence; default the tokenizer's BOS id (toy models: 0).
        registry: where names are looked up; default the installed entry points.
        progress: called with a ``mechlab.progress.Step`` (``done``/``total`` samples) after each batch.

    Returns:
        A ``DetectorReport``: ``report["induction"].top(5)``; failed detectors in ``report.failures``.

    Raises:
        UnknownDetectorError: a name is not installed (the message lists what is).
        InputError: ``n_samples`` < 2, ``batch_size`` < 1, ``seq_len`` does not fit the model's
            context (or is below 2 with a content-dependent detector), a detector is requested
            twice, or ``names`` holds something that is neither a name nor a Detector instance.

    Example (an untrained toy model has no induction heads):

        >>> import mechlab
        >>> model = mechlab.load_model("toy:attn-only-2l").model
        >>> report = mechlab.run_detectors(model, ["induction", "previous-token"], n_samples=4)
        >>> tuple(report["induction"].scores.shape), report["induction"].detected()
        ((2, 4), [])
    """
    if n_samples < 2:
        raise InputError(f"n_samples must be at least 2 to give an interval; got {n_samples}.")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1 (sequences per forward pass); got {batch_size}.")
    start = time.perf_counter()
    registry = DetectorRegistry.from_entry_points() if registry is None else registry
    failures: dict[str, str] = {}
    detectors = _resolve(names, registry, failures)
    seq_len = default_seq_len(model) if seq_len is None else seq_len
    check_fits(model, seq_len)
    content = [d.name for d in detectors if d.content_dependent and d.reads]
    if content and seq_len < 2:
        raise InputError(
            f"seq_len={seq_len} leaves no way to reorder the second copy for the positional control "
            f"of {', '.join(content)}; use seq_len >= 2 (the default is {default_seq_len(model)})."
        )
    bos = default_bos(model) if bos is None else bos
    settings: dict[str, Any] = dict(n_samples=n_samples, seq_len=seq_len, seed=seed, bos=bos)
    runs = {d.name: _Run(d, seed) for d in detectors}
    _sample_patterns(model, [r for r in runs.values() if r.detector.reads], settings, batch_size, progress)
    for run in runs.values():
        if not run.detector.reads:
            run.score_weights(model, max(n_samples, MIN_NULL_DRAWS))
    results = {}
    for name, run in runs.items():
        if run.error is not None:
            failures[name] = run.error
        else:
            results[name] = run.result(seq_len=seq_len if run.detector.reads else 0, seed=seed)
    settings["seconds"] = round(time.perf_counter() - start, 3)
    return DetectorReport(results=results, failures=failures, settings=settings)


class _Run:
    """One detector's samples as they accumulate, or the error that stopped it."""

    def __init__(self, detector: Detector, seed: int) -> None:
        self.detector = detector
        self.generator = torch.Generator().manual_seed(seed + zlib.crc32(detector.name.encode()))
        self.scores: list[SampleScores] = []
        self.baselines: list[SampleScores] = []
        self.controls: list[SampleScores] = []
        self.chances: list[Tensor] = []
        self.error: str | None = None

    def attempt(self, step: Callable[[], None], n_layers: int, n_heads: int) -> None:
        if self.error is not None:
            return
        try:
            step()
            for part in (self.scores, self.baselines, self.controls):
                if part and tuple(part[-1].shape[1:]) != (n_layers, n_heads):
                    raise DetectorPluginError(
                        f"returned scores of shape {tuple(part[-1].shape)}; expected "
                        f"[sample, {n_layers}, {n_heads}] (one score per layer and head)"
                    )
            if self.chances and self.chances[-1].shape != self.scores[-1].shape[:1]:
                raise DetectorPluginError(
                    f"returned a chance level of shape {tuple(self.chances[-1].shape)}; expected "
                    f"[{self.scores[-1].shape[0]}] (one value per sequence)"
                )
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a plugin's SystemExit is its failure, not the program's
            self.error = (
                f"Detector {self.detector.name!r} ({type(self.detector).__module__}) raised "
                f"{type(error).__name__} while scoring: {error}"
            )

    def score_patterns(self, model: HookedModel, cache: Any, control: Any, tokens: Tokens) -> None:
        detector = self.detector
        self.scores.append(detector.score(model, cache, tokens).detach().float().cpu())
        baseline = detector.baseline(model, cache, tokens, generator=self.generator)
        self.baselines.append(baseline.detach().float().cpu())
        chance = detector.chance(tokens)
        if chance is not None:
            self.chances.append(chance.detach().float().cpu())
        if detector.content_dependent:
            self.controls.append(detector.score(model, control, tokens).detach().float().cpu())

    def score_weights(self, model: HookedModel, n_draws: int) -> None:
        def step() -> None:
            draws = torch.zeros(n_draws, 0, dtype=torch.long)  # no tokens: one row per null draw
            self.scores.append(self.detector.score(model, None, draws).detach().float().cpu())
            null = self.detector.baseline(model, None, draws, generator=self.generator)
            self.baselines.append(null.detach().float().cpu())
            if self.scores[-1].shape[0] != 1 or null.shape[0] != n_draws:
                raise DetectorPluginError(
                    f"returned {self.scores[-1].shape[0]} score row(s) and {null.shape[0]} null "
                    f"draw(s) from the weights; expected 1 and {n_draws}"
                )

        self.attempt(step, int(model.cfg.n_layers), int(model.cfg.n_heads))

    def result(self, *, seq_len: int, seed: int) -> DetectorResult:
        return DetectorResult(
            name=self.detector.name,
            description=self.detector.description,
            threshold=float(self.detector.threshold),
            samples=torch.cat(self.scores),
            baseline_samples=torch.cat(self.baselines),
            control_samples=torch.cat(self.controls) if self.controls else None,
            seq_len=seq_len,
            seed=seed,
            chance_samples=torch.cat(self.chances) if len(self.chances) == len(self.scores) > 0 else None,
        )


def _resolve(
    names: str | Sequence[str | Detector] | None, registry: DetectorRegistry, failures: dict[str, str]
) -> list[Detector]:
    wanted: Sequence[str | Detector] = (
        registry.names() if names is None else [names] if isinstance(names, str) else names
    )
    for item in wanted:
        if not isinstance(item, str | Detector):
            hint = f" (a class: pass {item.__name__}())" if isinstance(item, type) else ""
            raise InputError(f"Detectors are given by name or as Detector instances; got {item!r}{hint}.")
    requested = [item if isinstance(item, str) else str(getattr(item, "name", item)) for item in wanted]
    repeated = sorted({name for name in requested if requested.count(name) > 1})
    if repeated:
        raise InputError(f"Detector(s) {', '.join(repeated)} requested more than once; name each once.")
    for item in wanted:
        if isinstance(item, str) and item not in registry:
            registry.entry(item)  # UnknownDetectorError before anything runs
    detectors = []
    for name, item in zip(requested, wanted, strict=True):
        try:
            if isinstance(item, str):
                detectors.append(registry.create(item))
            else:
                check_detector(item, repr(item), "passed as an instance")
                detectors.append(item)
        except DetectorError as error:  # a broken plugin or a name two packages claim
            failures[name] = str(error)
    return detectors


def _sample_patterns(
    model: HookedModel, runs: list[_Run], settings: dict[str, Any], batch_size: int, progress: Progress | None
) -> None:
    if not runs:
        return
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = _hook_names(model, runs)
    n_samples, seed = settings["n_samples"], settings["seed"]
    tokens_rng = torch.Generator().manual_seed(seed)
    control_rng = torch.Generator().manual_seed(seed + 1)
    vocab = sampling_vocab(model, settings["bos"])
    device = model_device(model)
    need_control = any(run.detector.content_dependent for run in runs)
    for done in range(0, n_samples, batch_size):
        size = min(batch_size, n_samples - done)
        tokens = draw_repeated(
            size, settings["seq_len"], vocab=vocab, bos=settings["bos"], generator=tokens_rng
        ).to(device)
        cache = DetectorCache(model, _cached_forward(model, tokens, names))
        control = None
        if need_control:
            broken = shuffle_second_copy(tokens.cpu(), generator=control_rng).to(device)
            control = DetectorCache(model, _cached_forward(model, broken, names))
        for run in runs:
            run.attempt(partial(run.score_patterns, model, cache, control, tokens), n_layers, n_heads)
        if progress is not None:
            progress(Step(done + size, n_samples))


def _hook_names(model: HookedModel, runs: list[_Run]) -> list[str]:
    names: set[str] = set()
    for run in runs:
        try:
            layers = range(int(model.cfg.n_layers))
            sites = [validate(Site(kind, layer), model) for kind in run.detector.reads for layer in layers]
        except MechlabError as error:
            run.error = f"Detector {run.detector.name!r} reads sites this model lacks: {error}"
            continue
        names.update(site.hook_name for site in sites)
    return sorted(names)


def _cached_forward(model: HookedModel, tokens: Tokens, names: list[str]) -> Any:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return cache
