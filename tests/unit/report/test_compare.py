"""Comparing two files of one model: identical files agree everywhere; a changed file differs where
it was changed; models of different shapes are refused."""

import pytest
import torch

import mechlab
from mechlab.detectors.result import DetectorReport, DetectorResult
from mechlab.report.compare import _changes, compare_models

PROMPTS = [torch.tensor([[0, 5, 9, 3, 5, 9, 3, 7]]), torch.tensor([[0, 11, 2, 40, 11, 2]])]


def test_a_model_compared_with_itself_agrees_everywhere(tiny) -> None:
    result = compare_models(tiny, tiny, prompts=PROMPTS, detectors=("previous-token",), n_samples=2)
    assert result.mean_kl == pytest.approx(0.0, abs=1e-9) and result.top1_agreement == 1.0
    assert all(value == 0.0 for values in result.layers.values() for value in values)
    assert float(result.heads.abs().max()) == 0.0 and result.changes == ()
    assert result.n_positions == 14 and result.detected_a == result.detected_b


def test_a_change_in_layer_one_shows_from_layer_one(tiny) -> None:
    other = mechlab.load_model("toy:tiny")
    with torch.no_grad():
        other.model.blocks[1].attn.W_O.mul_(1.5)  # attention output of block 1 off by half
    result = compare_models(tiny, other, prompts=PROMPTS, detectors=())
    assert result.layers["attn_out"][0] == 0.0 and result.layers["resid_post"][0] == 0.0
    assert result.layers["attn_out"][1] == pytest.approx(0.5, rel=1e-4)
    assert result.layers["resid_post"][1] > 0 and result.mean_kl > 0
    assert float(result.heads.abs().max()) == 0.0  # patterns are computed before the output projection
    page = result.page().body()
    assert "Where the files diverge" in page and "<img" in page


def test_models_of_different_shapes_are_refused(tiny, attn_only) -> None:
    with pytest.raises(mechlab.InputError, match=r"compare needs two files of one model.*differ in"):
        compare_models(tiny, attn_only, prompts=PROMPTS, detectors=())


def _report(scores: list[float]) -> DetectorReport:
    """A one-layer induction result whose heads score ``scores`` on every sample (baseline 0)."""
    samples = torch.tensor(scores).repeat(4, 1, 1) + torch.linspace(-0.01, 0.01, 4)[:, None, None]
    result = DetectorResult(
        name="induction",
        description="",
        threshold=0.3,
        samples=samples,
        baseline_samples=torch.zeros(4, 1, len(scores)),
        control_samples=None,
        seq_len=10,
        seed=0,
    )
    return DetectorReport(results={"induction": result}, failures={}, settings={})


def test_verdict_changes_name_the_heads_that_gain_or_lose_one() -> None:
    a, b = _report([0.9, 0.5, 0.05]), _report([0.2, 0.6, 0.8])
    assert [row.verdict for row in a["induction"].rows()] == ["detected", "detected", "weak"]
    changes = _changes(a, b)
    assert [(c.label, c.verdict_a, c.verdict_b) for c in changes] == [
        ("0.0", "detected", "weak"),
        ("0.2", "weak", "detected"),
    ]
    assert _changes(a, DetectorReport(results={}, failures={"induction": "boom"}, settings={})) == ()
