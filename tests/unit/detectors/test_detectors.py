"""The detector registry, run_detectors and DetectorResult on tiny seeded models."""

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import mechlab
from mechlab import Detector, DetectorRegistry, PatternDetector, Site, run_detectors
from mechlab.detectors.builtin import InductionDetector, PreviousTokenDetector
from mechlab.detectors.result import VERDICTS
from mechlab.errors import (
    DetectorPluginError,
    DuplicateDetectorError,
    InputError,
    UnknownDetectorError,
)

BUILTINS = ["attention-sink", "copying", "current-token", "duplicate-token", "induction", "previous-token"]


@dataclasses.dataclass
class FakeDist:
    name: str


@dataclasses.dataclass
class FakeEntryPoint:
    name: str
    value: str
    dist: FakeDist | None
    target: Any = None

    def load(self) -> Any:
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


class Failing(PatternDetector):
    name: ClassVar[str] = "failing"
    description: ClassVar[str] = "raises while scoring"

    def expected_pattern(self, tokens: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("plugin bug")


class WrongShape(Detector):
    name: ClassVar[str] = "wrong-shape"
    description: ClassVar[str] = "returns one score per sequence instead of per head"
    reads: ClassVar[tuple[str, ...]] = ("pattern",)

    def score(self, model: Any, cache: Any, tokens: torch.Tensor) -> Any:
        return torch.zeros(tokens.shape[0], 1, 1)

    def baseline(self, model: Any, cache: Any, tokens: torch.Tensor, *, generator: Any) -> Any:
        return torch.zeros(tokens.shape[0], 1, 1)


def test_builtins_are_registered_through_entry_points() -> None:
    registry = DetectorRegistry.from_entry_points()
    assert set(BUILTINS) <= set(registry.names())
    for name in BUILTINS:
        assert registry.entry(name).provider == "mechlab"
        assert registry.create(name).name == name


def test_registry_is_a_value() -> None:
    first, second = DetectorRegistry.from_entry_points(), DetectorRegistry.from_entry_points()
    assert first == second
    extended = first.with_detectors(Failing)
    assert "failing" in extended and "failing" not in first
    assert extended.entry("failing").provider == "(defined in this session)"


def test_unknown_detector_lists_the_installed_ones() -> None:
    with pytest.raises(
        UnknownDetectorError, match=r"No detector named 'inductoin'.*induction.*previous-token"
    ):
        DetectorRegistry.from_entry_points().create("inductoin")


def test_duplicate_names_name_both_distributions() -> None:
    points = [
        FakeEntryPoint("induction", "mechlab.detectors.builtin:InductionDetector", FakeDist("mechlab")),
        FakeEntryPoint("induction", "other_pkg:Induction", FakeDist("other-pkg")),
        FakeEntryPoint("previous-token", "x:P", FakeDist("mechlab"), PreviousTokenDetector),
    ]
    registry = DetectorRegistry.from_entry_points(points)  # a clash disables only its own name
    assert registry.names() == ["induction", "previous-token"]
    assert registry.create("previous-token").name == "previous-token"
    assert [entry.provider for entry in registry.conflicts["induction"]] == ["mechlab", "other-pkg"]
    for use in (registry.entry, registry.create):
        with pytest.raises(
            DuplicateDetectorError, match=r"'induction'.*mechlab \(.*\) and other-pkg \(other_pkg"
        ):
            use("induction")


def test_the_same_distribution_seen_twice_is_not_a_duplicate() -> None:
    point = FakeEntryPoint("induction", "m:Induction", FakeDist("mechlab"), InductionDetector)
    registry = DetectorRegistry.from_entry_points([point, point])
    assert registry.names() == ["induction"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (ImportError("no module named broken"), r"could not be loaded: ImportError.*Reinstall broken-pkg"),
        (object, r"not a subclass of mechlab.Detector"),
        (PatternDetector, r"is abstract: it does not implement expected_pattern"),
        (PreviousTokenDetector, r"registered as 'broken' but its name attribute is 'previous-token'"),
    ],
)
def test_broken_plugins_raise_plugin_errors(target: Any, message: str) -> None:
    registry = DetectorRegistry.from_entry_points(
        [FakeEntryPoint("broken", "b:B", FakeDist("broken-pkg"), target)]
    )
    with pytest.raises(DetectorPluginError, match=message):
        registry.create("broken")


def test_a_failing_plugin_is_reported_and_the_others_kept(attn_only: mechlab.LoadedModel) -> None:
    registry = DetectorRegistry.from_entry_points().with_detectors(Failing, WrongShape)
    report = run_detectors(
        attn_only.model, ["induction", "failing", "wrong-shape"], n_samples=4, registry=registry
    )
    assert list(report) == ["induction"]
    assert report["induction"].samples.shape == (4, 2, 4)
    assert "'failing'" in report.failures["failing"] and "plugin bug" in report.failures["failing"]
    assert "expected [sample, 2, 4]" in report.failures["wrong-shape"]
    with pytest.raises(DetectorPluginError, match="plugin bug"):
        report["failing"]
    # A failed detector is a missing key for the Mapping protocol.
    assert "failing" not in report and report.get("failing") is None and "induction" in report
    with pytest.raises(KeyError):
        report["failing"]


class RaisesOnCreate(PreviousTokenDetector):
    name: ClassVar[str] = "raises-on-create"

    def __init__(self) -> None:
        raise RuntimeError("needs a config file")


def test_a_plugin_whose_constructor_raises_breaks_only_itself(attn_only: mechlab.LoadedModel) -> None:
    broken = FakeEntryPoint("raises-on-create", "b:R", FakeDist("broken-pkg"), RaisesOnCreate)
    good = FakeEntryPoint("previous-token", "x:P", FakeDist("mechlab"), PreviousTokenDetector)
    registry = DetectorRegistry.from_entry_points([broken, good])
    with pytest.raises(DetectorPluginError, match=r"raised RuntimeError while being created: needs a config"):
        registry.create("raises-on-create")
    report = run_detectors(attn_only.model, None, n_samples=2, registry=registry)
    assert list(report) == ["previous-token"] and "needs a config" in report.failures["raises-on-create"]


class ExitsOnCreate(PreviousTokenDetector):
    name: ClassVar[str] = "exits-on-create"

    def __init__(self) -> None:
        raise SystemExit(3)


class ExitsWhileScoring(PreviousTokenDetector):
    name: ClassVar[str] = "exits-while-scoring"

    def score(self, model: Any, cache: Any, tokens: torch.Tensor) -> torch.Tensor:
        raise SystemExit("bye")


def test_a_plugin_that_calls_sys_exit_is_a_plugin_failure(attn_only: mechlab.LoadedModel) -> None:
    points = [
        FakeEntryPoint("exits-on-create", "b:E", FakeDist("exit-pkg"), ExitsOnCreate),
        FakeEntryPoint("exits-while-scoring", "b:S", FakeDist("exit-pkg"), ExitsWhileScoring),
        FakeEntryPoint("previous-token", "x:P", FakeDist("mechlab"), PreviousTokenDetector),
    ]
    registry = DetectorRegistry.from_entry_points(points)
    with pytest.raises(DetectorPluginError, match=r"raised SystemExit while being created: 3"):
        registry.create("exits-on-create")
    report = run_detectors(attn_only.model, None, n_samples=2, registry=registry)
    assert list(report) == ["previous-token"]
    assert "SystemExit" in report.failures["exits-on-create"]
    assert "raised SystemExit while scoring: bye" in report.failures["exits-while-scoring"]


def test_detector_classes_are_checked_when_defined() -> None:
    with pytest.raises(
        DetectorPluginError, match=r"NoDescription.*description is None.*see mechlab.Detector"
    ):

        class NoDescription(PatternDetector):
            name: ClassVar[str] = "no-description"

            def expected_pattern(self, tokens: torch.Tensor) -> torch.Tensor:
                return torch.zeros(tokens.shape[0], tokens.shape[1], tokens.shape[1])

    with pytest.raises(DetectorPluginError, match=r"threshold is 'high'"):

        class BadThreshold(PreviousTokenDetector):
            threshold: ClassVar[Any] = "high"


def test_instances_are_checked_too(attn_only: mechlab.LoadedModel) -> None:
    broken = PreviousTokenDetector()
    broken.description = ""  # type: ignore[misc]
    report = run_detectors(attn_only.model, [broken, "induction"], n_samples=2)
    assert list(report) == ["induction"]
    assert "description is ''" in report.failures["previous-token"]


def test_an_unloadable_plugin_does_not_stop_the_others(attn_only: mechlab.LoadedModel) -> None:
    broken = FakeEntryPoint("broken", "b:B", FakeDist("broken-pkg"), ImportError("gone"))
    good = FakeEntryPoint("previous-token", "x:P", FakeDist("mechlab"), PreviousTokenDetector)
    registry = DetectorRegistry.from_entry_points([broken, good])
    report = run_detectors(attn_only.model, None, n_samples=2, registry=registry)
    assert list(report) == ["previous-token"] and "gone" in report.failures["broken"]


def test_unknown_name_fails_before_running(attn_only: mechlab.LoadedModel) -> None:
    with pytest.raises(UnknownDetectorError, match="No detector named 'nope'"):
        run_detectors(attn_only.model, ["induction", "nope"], n_samples=2)


@pytest.mark.parametrize("fixture", ["attn_only", "tiny_gqa"])
def test_detectors_never_modify_the_cache(fixture: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(fixture).model
    tokens = mechlab.repeated_tokens(model, 3, seq_len=6)
    names = [Site("pattern", layer).hook_name for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    before = {name: cache[name].clone() for name in names}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    registry = DetectorRegistry.from_entry_points()
    generator = torch.Generator().manual_seed(0)
    for name in BUILTINS:
        detector = registry.create(name)
        scores = detector.score(model, cache, tokens)
        detector.baseline(model, cache, tokens, generator=generator)
        assert scores.shape[1:] == (model.cfg.n_layers, model.cfg.n_heads)
    for name in names:
        assert torch.equal(cache[name], before[name]), name
    for name, param in model.named_parameters():
        assert torch.equal(param, weights[name]), name


def test_run_detectors_is_seeded(attn_only: mechlab.LoadedModel) -> None:
    model = attn_only.model
    first = run_detectors(model, ["induction", "previous-token"], n_samples=4, seed=3)
    again = run_detectors(model, ["previous-token", "induction"], n_samples=4, seed=3)
    alone = run_detectors(model, ["induction"], n_samples=4, seed=3)
    other = run_detectors(model, ["induction"], n_samples=4, seed=4)
    for name in ("induction", "previous-token"):
        assert torch.equal(first[name].samples, again[name].samples)
        assert torch.equal(first[name].baseline_samples, again[name].baseline_samples)
    assert torch.equal(first["induction"].baseline_samples, alone["induction"].baseline_samples)
    assert not torch.equal(first["induction"].samples, other["induction"].samples)


def test_result_summaries(attn_only: mechlab.LoadedModel, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = run_detectors(
        attn_only.model,
        ["induction", "copying"],
        n_samples=6,
        batch_size=4,
        progress=lambda state: calls.append((state.done, state.total)),
    )
    assert calls == [(4, 6), (6, 6)]
    induction, copying = report["induction"], report["copying"]
    stats = induction.stats
    assert (stats.low <= stats.mean).all() and (stats.mean <= stats.high).all()
    assert induction.control is not None and copying.control is None
    # n_samples=6 < MIN_NULL_DRAWS=8 null draws
    assert copying.samples.shape == (1, 2, 4) and copying.baseline_samples.shape == (8, 2, 4)
    rows = induction.rows()
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    assert induction.top(3) == rows[:3] and all(r.verdict in VERDICTS for r in rows)
    assert str(rows[0]).startswith(f"{rows[0].layer}.{rows[0].head} ")
    assert induction.plot().axes[0].get_title().startswith("induction score per head")
    html = induction._repr_html_()
    assert "<table" in html and "data:image/png;base64," in html and "95% interval" in html
    path = report.save(tmp_path / "report.json")
    loaded = mechlab.DetectorReport.load(path)
    assert torch.equal(loaded["induction"].samples, induction.samples)
    assert loaded["copying"].top(3) == copying.top(3)
    page = report.save_html(tmp_path / "report.html", title="<toy>").read_text()
    assert page.startswith("<!DOCTYPE html>") and "&lt;toy&gt;" in page
    assert "Content-Security-Policy" in page and not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert page.count("<section") == 2 and page.count("data:image/png;base64,") == 2


def test_untrained_model_has_no_induction_heads(attn_only: mechlab.LoadedModel) -> None:
    result = run_detectors(attn_only.model, ["induction"], n_samples=8)["induction"]
    assert result.detected() == []
    assert float(result.scores.max()) < 0.2


def test_bad_settings_are_input_errors(attn_only: mechlab.LoadedModel) -> None:
    with pytest.raises(InputError, match="at least 2"):
        run_detectors(attn_only.model, ["induction"], n_samples=1)
    with pytest.raises(InputError, match=r"longer than the model's context of 64.*seq_len <= 31"):
        run_detectors(attn_only.model, ["induction"], seq_len=40)
    with pytest.raises(InputError, match="induction requested more than once"):
        run_detectors(attn_only.model, ["induction", InductionDetector()])
    with pytest.raises(InputError, match="batch_size must be at least 1"):
        run_detectors(attn_only.model, ["induction"], batch_size=0)


def test_copying_on_an_untrained_model_is_chance() -> None:
    """Each head's one exact score is compared with the 97.5% prediction bound of the null draws. The
    earlier comparison with the interval of the null draws' mean called 3 of these 8 heads copying."""
    model = mechlab.load_model("toy:attn-only-2l,seed=1").model
    verdicts = [
        v for row in run_detectors(model, ["copying"], n_samples=2)["copying"].verdicts() for v in row
    ]
    assert sum(v != "chance" for v in verdicts) <= 1
