"""``run_detectors``: score every head of a model with several detectors over random inputs.

The inputs are ``n_samples`` independent sequences of repeated random tokens (``BOS, r, r``), run
through the model in batches with only the needed activations cached (one forward pass per batch
serves every detector). Each detector scores each sequence; the mean over sequences is reported
with a 95% interval, beside the exact chance level, the shuffled-position baseline and, for
content-dependent detectors, the control score on the same sequences with the second copy shuffled.
Weight detectors are scored once, against at least ``MIN_NULL_DRAWS`` draws of their null.

Each batch (its forward passes and every detector's scores of it) is one task of an executor
(``mechlab.executors``), and so is each weight detector. A detector that raises is reported by name
in ``report.failures``; the others' results are kept. Random draws are seeded per purpose (tokens,
control, each detector's baseline in each batch), so a detector's result does not change when other
detectors run beside it, nor with the order in which an executor runs the batches.
"""

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeAlias

import torch
from torch import Tensor

from mechlab.activations import capture
from mechlab.detectors.base import Detector, DetectorCache
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
from mechlab.executors import Executor, resolve_executor
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
    executor: Executor | str | None = None,
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
        executor: runs the batches and the weight detectors, one task each (``mechlab.executors``;
            default: in this process).

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
    runs = {d.name: _Run(d) for d in detectors}
    sites = _sites(model, [r for r in runs.values() if r.detector.reads])
    live = [r.detector for r in runs.values() if r.error is None]
    reading = [d for d in live if d.reads]
    control = any(d.content_dependent for d in reading)
    batches = _batches(model, settings, batch_size, control) if reading else []
    weights = [_Weights(d.name, max(n_samples, MIN_NULL_DRAWS)) for d in live if not d.reads]
    done = 0

    def arrived(index: int, _: Any) -> None:
        nonlocal done
        if index < len(batches) and progress is not None:
            done += len(batches[index].tokens)
            progress(Step(done, n_samples))

    scoring = _Scoring(model, {d.name: d for d in live}, tuple(sites), seed)
    for outcomes in resolve_executor(executor).map(scoring, [*batches, *weights], on_result=arrived):
        for name, outcome in outcomes.items():
            runs[name].add(outcome)
    results = {}
    for name, run in runs.items():
        if run.error is not None:
            failures[name] = run.error
        else:
            results[name] = run.result(seq_len=seq_len if run.detector.reads else 0, seed=seed)
    settings["seconds"] = round(time.perf_counter() - start, 3)
    return DetectorReport(results=results, failures=failures, settings=settings)


@dataclasses.dataclass(frozen=True)
class _Batch:
    """A task: sequences ``[sample, pos]`` (on the CPU) for one forward pass, their positional
    controls (``None``: no detector needs them), and the batch's index."""

    index: int
    tokens: Tokens
    control: Tokens | None


@dataclasses.dataclass(frozen=True)
class _Weights:
    """A task: the weight detector ``name``, scored once, against ``n_draws`` draws of its null."""

    name: str
    n_draws: int


@dataclasses.dataclass(frozen=True)
class _Part:
    """One task's output from one detector, as it returned them (``_Scoring`` checks that
    ``scores``, ``baseline`` and ``control`` are ``[sample, layer, head]`` and ``chance``
    ``[sample]``, with the ``sample`` of ``scores``)."""

    scores: Tensor
    baseline: Tensor
    control: Tensor | None = None
    chance: Tensor | None = None


# A detector's part of a task, or the error message that stopped it.
Outcome: TypeAlias = _Part | str


class _Run:
    """One detector's parts in task order, or the first error that stopped it."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.parts: list[_Part] = []
        self.error: str | None = None

    def add(self, outcome: Outcome) -> None:
        if self.error is not None:
            return
        if isinstance(outcome, str):
            self.error = outcome
        else:
            self.parts.append(outcome)

    def result(self, *, seq_len: int, seed: int) -> DetectorResult:
        controls = [p.control for p in self.parts if p.control is not None]
        chances = [p.chance for p in self.parts if p.chance is not None]
        return DetectorResult(
            name=self.detector.name,
            description=self.detector.description,
            threshold=float(self.detector.threshold),
            samples=torch.cat([p.scores for p in self.parts]),
            baseline_samples=torch.cat([p.baseline for p in self.parts]),
            control_samples=torch.cat(controls) if controls else None,
            seq_len=seq_len,
            seed=seed,
            chance_samples=torch.cat(chances) if len(chances) == len(self.parts) > 0 else None,
        )


@dataclasses.dataclass(frozen=True)
class _Scoring:
    """The work of every task: a batch's forward passes scored by each detector that reads
    activations, or one weight detector's score and null draws.

    Each (detector, batch) draws its baseline from its own generator, so a batch's scores do not
    depend on which batches ran before it.
    """

    model: HookedModel
    detectors: dict[str, Detector]
    sites: tuple[Site, ...]
    seed: int

    def __call__(self, task: _Batch | _Weights) -> dict[str, Outcome]:
        if isinstance(task, _Weights):
            detector = self.detectors[task.name]
            generator = _generator(self.seed, detector.name)
            return {
                task.name: self._attempt(detector, partial(self._weights, detector, task.n_draws, generator))
            }
        device = model_device(self.model)
        tokens = task.tokens.to(device)
        cache = self._cache(tokens)
        control = None if task.control is None else self._cache(task.control.to(device))
        outcomes = {}
        for detector in self.detectors.values():
            if detector.reads:
                generator = _generator(self.seed, detector.name, task.index)
                step = partial(self._patterns, detector, cache, control, tokens, generator)
                outcomes[detector.name] = self._attempt(detector, step)
        return outcomes

    def _cache(self, tokens: Tokens) -> DetectorCache:
        acts = capture(self.model, tokens, self.sites, max_bytes=None, logits=False)
        return DetectorCache(self.model, acts.to_cache(self.model))

    def _patterns(
        self,
        detector: Detector,
        cache: DetectorCache,
        control: DetectorCache | None,
        tokens: Tokens,
        generator: torch.Generator,
    ) -> _Part:
        chance = detector.chance(tokens)
        return _Part(
            scores=_cpu(detector.score(self.model, cache, tokens)),
            baseline=_cpu(detector.baseline(self.model, cache, tokens, generator=generator)),
            control=_cpu(detector.score(self.model, control, tokens)) if detector.content_dependent else None,
            chance=None if chance is None else _cpu(chance),
        )

    def _weights(self, detector: Detector, n_draws: int, generator: torch.Generator) -> _Part:
        draws = torch.zeros(n_draws, 0, dtype=torch.long)  # no tokens: one row per null draw
        scores = _cpu(detector.score(self.model, None, draws))
        null = _cpu(detector.baseline(self.model, None, draws, generator=generator))
        if scores.shape[0] != 1 or null.shape[0] != n_draws:
            raise DetectorPluginError(
                f"returned {scores.shape[0]} score row(s) and {null.shape[0]} null draw(s) from the "
                f"weights; expected 1 and {n_draws}"
            )
        return _Part(scores, null)

    def _attempt(self, detector: Detector, step: Callable[[], _Part]) -> Outcome:
        n_layers, n_heads = int(self.model.cfg.n_layers), int(self.model.cfg.n_heads)
        try:
            part = step()
            for scores in (part.scores, part.baseline, part.control):
                if scores is not None and tuple(scores.shape[1:]) != (n_layers, n_heads):
                    raise DetectorPluginError(
                        f"returned scores of shape {tuple(scores.shape)}; expected "
                        f"[sample, {n_layers}, {n_heads}] (one score per layer and head)"
                    )
            if part.chance is not None and part.chance.shape != part.scores.shape[:1]:
                raise DetectorPluginError(
                    f"returned a chance level of shape {tuple(part.chance.shape)}; expected "
                    f"[{part.scores.shape[0]}] (one value per sequence)"
                )
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a plugin's SystemExit is its failure, not the program's
            return (
                f"Detector {detector.name!r} ({type(detector).__module__}) raised "
                f"{type(error).__name__} while scoring: {error}"
            )
        return part


def _cpu(scores: Tensor) -> Tensor:
    return scores.detach().float().cpu()


def _generator(seed: int, name: str, batch: int = 0) -> torch.Generator:
    """The random stream of detector ``name`` in one batch. ``crc32`` is below ``2**32``, so
    ``batch << 32`` keeps the streams of different batches apart."""
    return torch.Generator().manual_seed(seed + zlib.crc32(name.encode()) + (batch << 32))


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


def _batches(model: HookedModel, settings: dict[str, Any], batch_size: int, control: bool) -> list[_Batch]:
    """The random sequences, ``batch_size`` at a time, with their shuffled controls when ``control``."""
    n_samples, seed, bos = settings["n_samples"], settings["seed"], settings["bos"]
    tokens_rng = torch.Generator().manual_seed(seed)
    control_rng = torch.Generator().manual_seed(seed + 1)
    vocab = sampling_vocab(model, bos)
    batches = []
    for index, done in enumerate(range(0, n_samples, batch_size)):
        size = min(batch_size, n_samples - done)
        tokens = draw_repeated(size, settings["seq_len"], vocab=vocab, bos=bos, generator=tokens_rng)
        shuffled = shuffle_second_copy(tokens, generator=control_rng) if control else None
        batches.append(_Batch(index, tokens, shuffled))
    return batches


def _sites(model: HookedModel, runs: list[_Run]) -> list[Site]:
    """Every layer's site of each kind the runs read; a run reading a kind the model lacks fails."""
    sites: dict[Site, None] = {}
    for run in runs:
        try:
            layers = range(int(model.cfg.n_layers))
            wanted = [validate(Site(kind, layer), model) for kind in run.detector.reads for layer in layers]
        except MechlabError as error:
            run.error = f"Detector {run.detector.name!r} reads sites this model lacks: {error}"
            continue
        sites.update(dict.fromkeys(wanted))
    return list(sites)
