"""Detector results: per-head scores with intervals, the chance level, and a verdict per head.

Every score is a mean over independent random sequences; its 95% interval is Student's t interval
of that mean. A head *beats chance* when

- (pattern detectors) the interval lies above the exact chance level (``chance_level``: the expected
  score when the targets sit at random allowed positions);
- (weight detectors, one exact score) the score is above the one-sided 97.5% *prediction bound* of
  the null draws, ``mean + t(n-1) · sd · sqrt(1 + 1/n)``: where one more null draw would fall with
  probability 0.975 (normal null). The interval of the null draws' *mean* is the wrong reference
  for a single value: it shrinks with ``n`` while a single draw's spread does not;
- (other detectors, without a closed-form chance) the interval lies above the baseline's interval.

A head is *detected* when it beats chance, its score reaches the detector's threshold, and — for
content-dependent detectors — its interval lies above the control's interval (it loses its score
when the repeat is broken, so it attends by content, not by position). Verdicts: ``detected``,
``positional`` (above threshold and chance, but as high without the repeat), ``weak`` (above chance,
below threshold), ``chance``.
"""

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.detectors.base import SampleScores
from mechlab.errors import FailedDetectorError
from mechlab.files import atomic_write
from mechlab.render.page import Page
from mechlab.types import HeadScores

# Two-sided 95% quantiles of Student's t for 1-4 degrees of freedom; beyond, the Cornish-Fisher
# expansion (Abramowitz & Stegun 26.7.5) is within 0.003 of the exact value.
_T975_SMALL = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}
_Z975 = 1.959964

Verdict: TypeAlias = Literal["detected", "positional", "weak", "chance"]
VERDICTS: tuple[str, ...] = get_args(Verdict)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (half-width factor of a
    two-sided 95% interval)."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom; got {df}.")
    if df in _T975_SMALL:
        return _T975_SMALL[df]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


class Interval(NamedTuple):
    """Mean of per-sample scores and its 95% interval (``low == high == mean`` for one sample)."""

    mean: HeadScores
    low: HeadScores
    high: HeadScores


def mean_interval(samples: Float[Tensor, "sample ..."]) -> Interval:
    """Mean over the first axis with a two-sided 95% Student-t interval."""
    n = samples.shape[0]
    mean = samples.mean(0)
    if n == 1:
        return Interval(mean, mean.clone(), mean.clone())
    half = t_quantile_975(n - 1) * samples.std(0, correction=1) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half)


def null_prediction_bound(draws: Float[Tensor, "draw ..."]) -> Float[Tensor, "..."]:
    """The one-sided 97.5% prediction bound for one more draw: ``mean + t(n-1) · sd · sqrt(1 + 1/n)``.

    Raises:
        ValueError: fewer than 2 draws (no spread to estimate).
    """
    n = draws.shape[0]
    if n < 2:
        raise ValueError(f"A prediction bound needs at least 2 null draws; got {n}.")
    spread = draws.std(0, correction=1) * math.sqrt(1 + 1 / n)
    return draws.mean(0) + t_quantile_975(n - 1) * spread


class HeadScore(NamedTuple):
    """One head's row in a detector result.

    ``chance`` is the level the score had to clear (see the module docstring: the exact chance
    level, the null draws' prediction bound, or the baseline's upper bound); ``baseline`` the mean of the
    baseline draws (for pattern detectors, of the shuffled-position baseline); ``control`` the mean
    score with the repeat broken (content-dependent detectors).
    """

    layer: int
    head: int
    score: float
    low: float
    high: float
    chance: float
    baseline: float
    control: float | None
    verdict: Verdict

    @property
    def label(self) -> str:
        """``"layer.head"``, the usual way to name a head (``"18.6"``)."""
        return f"{self.layer}.{self.head}"

    def __str__(self) -> str:
        return f"{self.label} {self.score:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclasses.dataclass(frozen=True, eq=False)
class DetectorResult:
    """What one detector found: per-sequence scores of every head, with baseline and control.

    Attributes:
        name, description, threshold: from the detector.
        samples: ``[sample, layer, head]`` scores, one row per random sequence (one row for a
            weight detector, whose score is exact).
        baseline_samples: the same for the baseline (pattern detectors: the shuffled-position
            baseline, one draw per sequence; weight detectors: one row per null draw).
        control_samples: the same on the control input with the repeat broken (content-dependent
            detectors only), else ``None``.
        seq_len, seed: the inputs' random-block length and seed (``seq_len`` 0: weights only).
        chance_samples: the exact chance level of each sequence (``Detector.chance``), or ``None``
            when the detector has no closed form.
    """

    name: str
    description: str
    threshold: float
    samples: SampleScores
    baseline_samples: Float[Tensor, "null_sample layer head"]
    control_samples: SampleScores | None
    seq_len: int
    seed: int
    chance_samples: Float[Tensor, " sample"] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def stats(self) -> Interval:
        """Mean score per head and its 95% interval."""
        return mean_interval(self.samples)

    @property
    def scores(self) -> HeadScores:
        """Mean score per head, ``[layer, head]``."""
        return self.samples.mean(0)

    @property
    def baseline(self) -> Interval:
        """The shuffled-position baseline (what chance scores) per head, with its interval."""
        return mean_interval(self.baseline_samples)

    @property
    def control(self) -> Interval | None:
        """Scores with the repeat broken (content-dependent detectors), with intervals."""
        return None if self.control_samples is None else mean_interval(self.control_samples)

    @property
    def chance(self) -> float | None:
        """The exact chance level averaged over the sequences, or ``None`` if the detector has none."""
        return None if self.chance_samples is None else float(self.chance_samples.mean())

    def chance_bar(self) -> HeadScores:
        """Per head, the level the score must clear to beat chance (see the module docstring)."""
        if self.seq_len == 0:  # a weight detector: one exact score against the null draws
            return null_prediction_bound(self.baseline_samples)
        if self.chance_samples is not None:
            return torch.full_like(self.samples[0], float(self.chance_samples.mean()))
        return self.baseline.high

    def verdicts(self) -> list[list[Verdict]]:
        """``[layer][head]`` verdicts (see the module docstring)."""
        score, control = self.stats, self.control
        above_chance = score.low > self.chance_bar()
        strong = score.mean >= self.threshold
        content = torch.ones_like(strong) if control is None else score.low > control.high
        table: list[list[Verdict]] = []
        for layer in range(score.mean.shape[0]):
            row: list[Verdict] = []
            for head in range(score.mean.shape[1]):
                if not above_chance[layer, head]:
                    row.append("chance")
                elif not strong[layer, head]:
                    row.append("weak")
                else:
                    row.append("detected" if content[layer, head] else "positional")
            table.append(row)
        return table

    def rows(self) -> list[HeadScore]:
        """Every head, sorted by score (highest first)."""
        score, base, control, bar = self.stats, self.baseline, self.control, self.chance_bar()
        verdicts = self.verdicts()
        rows = []
        for layer, head in torch.cartesian_prod(*(torch.arange(n) for n in score.mean.shape)).tolist():
            rows.append(
                HeadScore(
                    layer=layer,
                    head=head,
                    score=float(score.mean[layer, head]),
                    low=float(score.low[layer, head]),
                    high=float(score.high[layer, head]),
                    chance=float(bar[layer, head]),
                    baseline=float(base.mean[layer, head]),
                    control=None if control is None else float(control.mean[layer, head]),
                    verdict=verdicts[layer][head],
                )
            )
        return sorted(rows, key=lambda row: (-row.score, row.layer, row.head))

    def top(self, k: int = 5) -> list[HeadScore]:
        """The ``k`` highest-scoring heads."""
        return self.rows()[:k]

    def detected(self) -> list[HeadScore]:
        """Heads with verdict ``detected``, highest score first."""
        return [row for row in self.rows() if row.verdict == "detected"]

    def plot(self) -> Any:
        """A ``[layer, head]`` heatmap of the mean scores (matplotlib Figure)."""
        from mechlab.render.figures import heatmap

        values = self.scores
        n_layers, n_heads = values.shape
        chance = self.chance if self.chance is not None else float(self.baseline.mean.mean())
        return heatmap(
            values,
            title=f"{self.name} score per head (chance ≈ {chance:.2f}, n = {self.n_samples})",
            xlabel="head",
            ylabel="layer",
            xticklabels=[str(h) for h in range(n_heads)],
            yticklabels=[str(layer) for layer in range(n_layers)],
            colorbar_label=f"{self.name} score",
            diverging=bool(values.min() < 0),
            annotate=n_layers * n_heads <= 64,
        )

    def add_to(self, page: Page) -> Page:
        """Append this result as a section of ``page`` (text, top-10 table, heatmap); returns it."""
        headers = ["head", "score", "95% interval", "chance", "baseline", "control (no repeat)", "verdict"]
        body = [
            [
                row.label,
                f"{row.score:.3f}",
                f"[{row.low:.3f}, {row.high:.3f}]",
                f"{row.chance:.3f}",
                f"{row.baseline:.3f}",
                "-" if row.control is None else f"{row.control:.3f}",
                row.verdict,
            ]
            for row in self.top(10)
        ]
        found = ", ".join(row.label for row in self.detected()) or "none"
        section = page.section(
            self.name, f"{self.description}. Detected heads (threshold {self.threshold}): {found}."
        )
        section.table(headers, body, caption=f"Top heads over {self.n_samples} sample(s)")
        section.figure(self.plot(), alt=f"{self.name} scores per head")
        return page

    def page(self) -> Page:
        """An offline page with this result (``.render()`` for HTML, ``.save(path)`` to a file)."""
        return self.add_to(Page(f"mechlab detector: {self.name}"))

    def _repr_html_(self) -> str:
        return self.page()._repr_html_()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_dict`` reads it back)."""
        control = self.control_samples
        return {
            "name": self.name,
            "description": self.description,
            "threshold": self.threshold,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "samples": self.samples.tolist(),
            "baseline_samples": self.baseline_samples.tolist(),
            "control_samples": None if control is None else control.tolist(),
            "chance_samples": None if self.chance_samples is None else self.chance_samples.tolist(),
            "top": [row._asdict() for row in self.top(10)],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DetectorResult":
        control, chance = data["control_samples"], data.get("chance_samples")
        return cls(
            name=data["name"],
            description=data["description"],
            threshold=float(data["threshold"]),
            samples=torch.tensor(data["samples"], dtype=torch.float32),
            baseline_samples=torch.tensor(data["baseline_samples"], dtype=torch.float32),
            control_samples=None if control is None else torch.tensor(control, dtype=torch.float32),
            seq_len=int(data["seq_len"]),
            seed=int(data["seed"]),
            chance_samples=None if chance is None else torch.tensor(chance, dtype=torch.float32),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class DetectorReport(Mapping[str, DetectorResult]):
    """The results of ``run_detectors``, by detector name, plus the detectors that failed.

    ``report["induction"]`` is a ``DetectorResult``; asking for a detector that failed raises
    ``FailedDetectorError`` (a ``DetectorPluginError`` and a ``KeyError``) with its error, so
    ``"name" in report`` is False and ``report.get("name")`` None for it, as for any missing key.
    ``failures`` maps each failed detector to its message.
    """

    results: dict[str, DetectorResult]
    failures: dict[str, str]
    settings: dict[str, Any]

    def __getitem__(self, name: str) -> DetectorResult:
        if name in self.failures:
            raise FailedDetectorError(self.failures[name])
        return self.results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def page(self, title: str = "mechlab detectors") -> Page:
        """An offline page with every result (settings, failures, one section per detector)."""
        settings = ", ".join(f"{key} {value}" for key, value in self.settings.items())
        page = Page(title, subtitle=settings)
        if self.failures:
            failed = page.section("Failed detectors")
            for name, message in self.failures.items():
                failed.text(f"{name} failed: {message}")
        for result in self.results.values():
            result.add_to(page)
        return page

    def _repr_html_(self) -> str:
        return self.page()._repr_html_()

    def html_page(self, title: str = "mechlab detectors") -> str:
        """A standalone offline HTML document with every result (figures inlined as PNG data URIs)."""
        return self.page(title).render()

    def save_html(self, path: Path | str, *, title: str = "mechlab detectors") -> Path:
        """Write ``html_page(title)`` to ``path`` atomically."""
        return self.page(title).save(path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "results": {name: result.to_dict() for name, result in self.results.items()},
            "failures": self.failures,
        }

    def save(self, path: Path | str) -> Path:
        """Write the report as JSON (atomically); ``DetectorReport.load`` reads it back."""
        return atomic_write(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> "DetectorReport":
        data = json.loads(Path(path).read_text())
        results = {name: DetectorResult.from_dict(item) for name, item in data["results"].items()}
        return cls(results=results, failures=dict(data["failures"]), settings=dict(data["settings"]))
