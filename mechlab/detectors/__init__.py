"""Head detectors: induction, previous-token, duplicate-token, attention-sink, current-token, copying,
and any detector another package installs under the entry-point group ``mechlab.detectors``.

A plugin needs only this module: ``PatternDetector`` (or ``Detector``, ``WeightDetector``) to
subclass, and the tensor types ``Tokens`` and ``Targets`` for its annotations."""

from mechlab.detectors.base import (
    Detector,
    PatternDetector,
    Targets,
    WeightDetector,
    chance_level,
    pattern_scores,
    shuffle_targets,
    target_attention,
)
from mechlab.detectors.inputs import TOY_BOS, repeated_tokens, shuffle_second_copy
from mechlab.detectors.registry import DetectorEntry, DetectorRegistry
from mechlab.detectors.result import DetectorReport, DetectorResult, HeadScore
from mechlab.detectors.run import run_detectors
from mechlab.types import Tokens

__all__ = [
    "TOY_BOS",
    "Detector",
    "DetectorEntry",
    "DetectorRegistry",
    "DetectorReport",
    "DetectorResult",
    "HeadScore",
    "PatternDetector",
    "Targets",
    "Tokens",
    "WeightDetector",
    "chance_level",
    "pattern_scores",
    "repeated_tokens",
    "run_detectors",
    "shuffle_second_copy",
    "shuffle_targets",
    "target_attention",
]
