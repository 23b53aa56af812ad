"""Head detectors: induction, previous-token, duplicate-token, attention-sink, current-token, copying,
and any detector another package installs under the entry-point group ``mechlab.detectors``."""

from mechlab.detectors.base import (
    Detector,
    PatternDetector,
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

__all__ = [
    "TOY_BOS",
    "Detector",
    "DetectorEntry",
    "DetectorRegistry",
    "DetectorReport",
    "DetectorResult",
    "HeadScore",
    "PatternDetector",
    "WeightDetector",
    "chance_level",
    "pattern_scores",
    "repeated_tokens",
    "run_detectors",
    "shuffle_second_copy",
    "shuffle_targets",
    "target_attention",
]
