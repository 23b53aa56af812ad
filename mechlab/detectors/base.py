"""Detectors: score every attention head by how much it behaves like a head of one known kind.

The recipe comes from the induction-head literature (Olsson et al. 2022; TransformerLens'
``head_detector``): feed the model sequences whose structure says where a head of the kind should
look, and measure how much of each head's attention lands there. The standard input is *repeated
random tokens*: BOS, then ``n`` random tokens ``r``, then ``r`` again. On the second copy an
induction head attends to the token just after the current token's first occurrence (offset
``1 - n`` from the diagonal), a duplicate-token head to the first occurrence itself (offset ``-n``),
a previous-token head to the position before (offset ``-1``).

An attention-pattern detector declares only *where* its kind of head attends:
``expected_pattern(tokens)`` marks, for every destination position, the source positions a head of
the kind would attend to (weight 1) — a row with no mark is not scored. The score of a head on one
sequence is the attention mass it puts on the marked sources, averaged over the scored rows
(``target_attention``): 1 for a perfect head, ``chance_level(targets)`` for a head that attends
uniformly. Because targets are derived from the tokens, not from a fixed layout, the same detector
works on any token sequence that contains the structure (for induction: a repeated token).

Chance is exact for a pattern detector: if a row's targets sat at random allowed (causal) source
positions, any attention row would put ``(number of targets) / (number of allowed sources)`` on them
in expectation — ``chance_level(targets)``, whatever the head does. Verdicts compare with that
value. The *shuffled-position baseline* (``shuffle_targets``) is one such random draw per sequence:
its mean estimates the same constant, and it is reported so the chance level can be seen.

The pure functions here work on plain tensors with no model. The model and cache glue lives once,
in ``PatternDetector.score`` and ``PatternDetector.baseline``; detectors never modify the cache.
A detector that reads weights instead of activations subclasses ``WeightDetector``.
"""

import abc
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, TypeAlias, final

import einops
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechlab.errors import MSG_DETECTOR_CLASS, DetectorPluginError, InputError
from mechlab.sites import Site
from mechlab.types import HeadScores, HookedModel, Pattern, Tokens

SampleScores: TypeAlias = Float[Tensor, "sample layer head"]
NullScores: TypeAlias = Float[Tensor, "draw layer head"]
Targets: TypeAlias = Float[Tensor, "batch q_pos k_pos"]
LayerPatterns: TypeAlias = Float[Tensor, "layer batch head q_pos k_pos"]


class Detector(abc.ABC):
    """A kind of attention head, and how to score every head of a model for it.

    Class attributes every concrete detector sets (checked when the class is defined):
        name: the registry key, e.g. ``"induction"`` (lowercase, words joined by ``-``).
        description: one sentence saying what a head of this kind does.
        reads: the per-layer site kinds it reads from the cache (``("pattern",)``); an empty tuple
            means it reads only weights and is scored once, without running the model.
        threshold: the score from which a head is called a head of this kind (when it also
            beats chance).
        content_dependent: the targets depend on token identity (induction, duplicate-token). Such
            detectors are also scored on a control input whose second copy is shuffled: a head
            that keeps its score there attends by position, not by content.

    What ``run_detectors`` passes, per batch of ``BOS, r, r`` sequences ``tokens``:
        ``score(model, cache, tokens)``: ``cache`` maps the hook names of ``reads`` (every layer)
            to the batch's activations, read-only. Returns ``[sample, layer, head]``, one row per
            sequence.
        ``score(model, control_cache, tokens)`` (content-dependent detectors): ``control_cache``
            holds the activations of the control input — each second copy permuted with no token
            left in place — while ``tokens`` are still the *unshuffled* tokens. Targets derived
            from ``tokens`` then sit where the repeat used to be: a head that attends by position
            still hits them, a head that follows content does not.
        ``baseline(model, cache, tokens, generator=...)``: the score under the detector's null
            hypothesis (no relation between the head and the structure), same shape as ``score``,
            random draws taken from ``generator`` only.
        ``chance(tokens)``: the exact expected score under that null, one value per sequence, or
            ``None`` when there is no closed form (verdicts then compare against ``baseline``).

    Weight detectors (``reads == ()``) are scored once: ``score(model, None, tokens)`` and
    ``baseline(model, None, tokens, generator=...)`` receive an empty ``[n_draws, 0]`` token
    tensor; ``score`` returns one row (the exact score), ``baseline`` one row per null draw.
    Neither may modify ``cache`` or the model.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    threshold: ClassVar[float] = 0.4
    content_dependent: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if _has_abstract_methods(cls):
            return  # an abstract intermediate class; its concrete subclasses are checked
        problems = detector_problems(cls)
        if problems:
            target = f"{cls.__module__}:{cls.__qualname__}"
            raise DetectorPluginError(
                MSG_DETECTOR_CLASS.format(target=target, provider="defined here", problems=problems)
            )

    @abc.abstractmethod
    def score(self, model: HookedModel, cache: Any, tokens: Tokens) -> SampleScores:
        """Score every head on each sequence of ``tokens`` (whose activations are in ``cache``)."""

    @abc.abstractmethod
    def baseline(
        self, model: HookedModel, cache: Any, tokens: Tokens, *, generator: torch.Generator
    ) -> SampleScores:
        """The score under the detector's null hypothesis (chance), one row per sample."""

    def chance(self, tokens: Tokens) -> Float[Tensor, " batch"] | None:
        """The exact expected null score of each sequence, if known (default: unknown)."""
        return None

    def __repr__(self) -> str:
        return f"<detector {self.name!r}: {self.description}>"


def detector_problems(detector: Any) -> str:
    """What is wrong with a detector class's (or instance's) declared attributes; ``""`` if nothing."""
    problems = []
    for attribute in ("name", "description"):
        value = getattr(detector, attribute, None)
        if not (isinstance(value, str) and value.strip()):
            problems.append(f"{attribute} is {value!r}")
    reads = getattr(detector, "reads", None)
    if not (isinstance(reads, tuple) and all(isinstance(kind, str) for kind in reads)):
        problems.append(f"reads is {reads!r}")
    threshold = getattr(detector, "threshold", None)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        problems.append(f"threshold is {threshold!r}")
    if not isinstance(getattr(detector, "content_dependent", None), bool):
        problems.append(f"content_dependent is {getattr(detector, 'content_dependent', None)!r}")
    return "; ".join(problems)


def _has_abstract_methods(cls: type) -> bool:
    # ABCMeta sets __abstractmethods__ only after __init_subclass__ runs, so look for them here.
    return any(getattr(getattr(cls, name, None), "__isabstractmethod__", False) for name in dir(cls))


class PatternDetector(Detector):
    """A detector defined by where its kind of head attends: subclasses give ``expected_pattern``."""

    reads: ClassVar[tuple[str, ...]] = ("pattern",)

    @abc.abstractmethod
    def expected_pattern(self, tokens: Tokens) -> Targets:
        """For each sequence, ``[q_pos, k_pos]`` weights: 1 on the sources a head of this kind
        attends to from destination ``q_pos``; rows of zeros are not scored."""

    @final
    def score(self, model: HookedModel, cache: Any, tokens: Tokens) -> SampleScores:
        return pattern_scores(layer_patterns(model, cache), self.expected_pattern(tokens))

    @final
    def baseline(
        self, model: HookedModel, cache: Any, tokens: Tokens, *, generator: torch.Generator
    ) -> SampleScores:
        targets = shuffle_targets(self.expected_pattern(tokens), generator=generator)
        return pattern_scores(layer_patterns(model, cache), targets)

    @final
    def chance(self, tokens: Tokens) -> Float[Tensor, " batch"]:
        return chance_level(self.expected_pattern(tokens))


class WeightDetector(Detector):
    """A detector computed from the model's weights alone (no forward pass, no interval)."""

    reads: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def weight_scores(self, model: HookedModel) -> HeadScores:
        """The score of every head, from the weights."""

    @abc.abstractmethod
    def null_scores(self, model: HookedModel, *, generator: torch.Generator, n_draws: int) -> NullScores:
        """``n_draws`` independent draws of the score with the structure the detector looks for
        destroyed (the null distribution a real score is compared against)."""

    @final
    def score(self, model: HookedModel, cache: Any, tokens: Tokens) -> SampleScores:
        return self.weight_scores(model).unsqueeze(0)

    @final
    def baseline(
        self, model: HookedModel, cache: Any, tokens: Tokens, *, generator: torch.Generator
    ) -> SampleScores:
        return self.null_scores(model, generator=generator, n_draws=int(tokens.shape[0]))


class DetectorCache(Mapping[str, Tensor]):
    """One forward pass's cached activations, read-only, with every layer's pattern stacked once.

    ``run_detectors`` hands this to every detector of a batch, so the ``[layer, batch, head, q_pos,
    k_pos]`` stack is built once per batch instead of once per detector and call.
    """

    def __init__(self, model: HookedModel, activations: Any) -> None:
        self._model = model
        self._activations = activations
        self._patterns: Tensor | None = None

    def __getitem__(self, name: str) -> Tensor:
        return self._activations[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._activations.keys())

    def __len__(self) -> int:
        return len(self._activations.keys())

    def patterns(self) -> LayerPatterns:
        if self._patterns is None:
            self._patterns = _stack_patterns(self._model, self._activations)
        return self._patterns


def layer_patterns(model: HookedModel, cache: Any) -> LayerPatterns:
    """Every layer's attention pattern from ``cache``, stacked (never a view into the cache).

    Raises:
        InputError: the cache lacks a layer's pattern (cache ``Site("pattern", layer)``).
    """
    if isinstance(cache, DetectorCache):
        return cache.patterns()
    return _stack_patterns(model, cache)


def _stack_patterns(model: HookedModel, cache: Any) -> LayerPatterns:
    patterns = []
    for layer in range(model.cfg.n_layers):
        name = Site("pattern", layer).hook_name
        try:
            patterns.append(cache[name])
        except KeyError as error:
            raise InputError(
                f"The cache has no attention pattern for layer {layer} ({name}). Pattern detectors "
                "need every layer's pattern: run the model with run_with_cache and names_filter="
                "[Site('pattern', layer).hook_name for each layer]."
            ) from error
    return torch.stack(patterns).float()


def pattern_scores(patterns: LayerPatterns, targets: Targets) -> SampleScores:
    """``target_attention`` for every layer at once: ``[batch, layer, head]``."""
    targets = targets.to(device=patterns.device, dtype=patterns.dtype)
    scored = _scored_rows(targets)
    mass = einops.einsum(
        patterns, targets, "layer batch head q_pos k_pos, batch q_pos k_pos -> batch layer head q_pos"
    )
    weights = scored / scored.sum(-1, keepdim=True)
    return einops.einsum(mass, weights, "batch layer head q_pos, batch q_pos -> batch layer head")


def target_attention(pattern: Pattern, targets: Targets) -> Float[Tensor, "batch head"]:
    """Attention mass each head puts on the target sources, averaged over scored destinations.

    Args:
        pattern: attention probabilities ``[batch, head, q_pos, k_pos]`` (rows sum to 1).
        targets: ``[batch, q_pos, k_pos]`` weights from ``expected_pattern``.

    Returns:
        ``[batch, head]``: 1 when every scored row attends only to its targets.
    """
    return pattern_scores(pattern.unsqueeze(0), targets)[:, 0]


def chance_level(targets: Targets) -> Float[Tensor, " batch"]:
    """The score of a head that attends uniformly to every allowed (causal) source position.

    It is also the exact expected score of *any* head when each row's targets are moved to random
    allowed positions (``shuffle_targets``): a row of attention sums to 1 over those positions, so
    it puts ``targets / allowed`` of its mass on random targets on average.
    """
    n_q, n_k = targets.shape[-2:]
    allowed = _causal(n_q, n_k, targets.device).to(targets.dtype)
    uniform = allowed / allowed.sum(-1, keepdim=True)
    return target_attention(uniform.expand(targets.shape[0], 1, n_q, n_k), targets)[:, 0]


def shuffle_targets(targets: Targets, *, generator: torch.Generator) -> Targets:
    """Move each row's targets to random allowed source positions (the shuffled-position baseline).

    Every row's causal entries (``k_pos <= q_pos``) are permuted at random; a row keeps its number
    of targets and stays causal. ``generator`` (a CPU generator) makes the draw reproducible.
    """
    n_q, n_k = targets.shape[-2:]
    keys = torch.rand(targets.shape, generator=generator).to(targets.device)
    position = torch.arange(n_k, device=targets.device, dtype=keys.dtype).expand_as(keys)
    # Non-causal entries get keys above every random key, so they sort last and in order.
    keys = torch.where(_causal(n_q, n_k, targets.device), keys, 2.0 + position)
    return targets.gather(-1, keys.argsort(dim=-1))


def _causal(n_q: int, n_k: int, device: torch.device) -> Bool[Tensor, "q_pos k_pos"]:
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(n_k - n_q)


def _scored_rows(targets: Targets) -> Float[Tensor, "batch q_pos"]:
    scored = (targets.sum(-1) > 0).to(targets.dtype)
    empty = (scored.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise InputError(
            f"The expected pattern marks no destination in sequence(s) {empty}: the input lacks the "
            "structure this detector looks for (induction and duplicate-token need a repeated "
            "token). Use repeated random tokens (mechlab.repeated_tokens)."
        )
    return scored
