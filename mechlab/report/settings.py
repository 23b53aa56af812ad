"""What ``mechlab.explain`` generates and explains and how much work it spends (``ExplainSettings``),
and the stages it reports progress on."""

import dataclasses

DEFAULT_DETECTORS: tuple[str, ...] = ("induction", "previous-token", "duplicate-token", "attention-sink")
STAGES: tuple[str, ...] = (
    "generating",
    "integrated gradients",
    "logit lens",
    "direct logit attribution",
    "attribution patching",
    "detectors",
    "knocking out top heads",
    "attention patterns",
    "verify",
    "SAE latents",
)


@dataclasses.dataclass(frozen=True)
class ExplainSettings:
    """What to generate and explain, and how much work to spend on it.

    Attributes:
        chat: wrap the prompt in the model's chat template as a user message.
        max_new_tokens: at most this many tokens are generated (stops at end-of-sequence).
        temperature: 0 for greedy decoding; > 0 samples with ``seed``.
        seed: seeds sampling (and nothing else is random except the detectors' inputs).
        step: which generated token to explain (0 = the first).
        target: explain this token instead of the generated one (must be one token).
        contrast: compare against this token instead of the runner-up (must be one token).
        top_heads: how many heads get attention views and detector lookups.
        ig_steps: gradient-evaluation budget of Integrated Gradients.
        detectors: detectors to run (empty: none); results are cached per model file.
        detector_samples: random sequences per detector.
        verify: also check the hooked model against an independent transformers reference.
        top_latents: with SAEs, how many latents (by activation, and by attribution) each lists.
    """

    chat: bool = False
    max_new_tokens: int = 20
    temperature: float = 0.0
    seed: int = 0
    step: int = 0
    target: str | None = None
    contrast: str | None = None
    top_heads: int = 6
    ig_steps: int = 128
    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    detector_samples: int = 8
    verify: bool = False
    top_latents: int = 8

    def __post_init__(self) -> None:
        checks = {
            "max_new_tokens": self.max_new_tokens >= 1,
            "temperature": self.temperature >= 0,
            "step": 0 <= self.step < self.max_new_tokens,
            "top_heads": 1 <= self.top_heads <= 64,
            "ig_steps": self.ig_steps >= 8,
            "detector_samples": self.detector_samples >= 2,
            "top_latents": 1 <= self.top_latents <= 64,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"ExplainSettings.{name}={getattr(self, name)!r} is out of range: max_new_tokens ≥ 1, "
                    "temperature ≥ 0, 0 ≤ step < max_new_tokens, 1 ≤ top_heads ≤ 64, ig_steps ≥ 8, "
                    "detector_samples ≥ 2, 1 ≤ top_latents ≤ 64."
                )
        if self.contrast is not None and self.contrast == self.target:
            raise ValueError("target and contrast are the same token; choose two different tokens.")


@dataclasses.dataclass(frozen=True)
class ExplainProgress:
    """A progress report: ``stage`` (one of ``STAGES``) is step ``done`` of ``total``."""

    stage: str
    done: int
    total: int
