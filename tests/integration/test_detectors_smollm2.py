"""Detectors on SmolLM2-135M-Instruct against the heads measured in REFERENCES.md."""

import pytest
import torch

import mechlab
from mechlab.detectors.result import t_quantile_975


@pytest.fixture(scope="module")
def report(smollm2: mechlab.LoadedModel) -> mechlab.DetectorReport:
    return mechlab.run_detectors(smollm2.model, ["induction", "previous-token"], n_samples=8)


def test_inputs_start_with_the_bos_smollm2_does_not_add(smollm2: mechlab.LoadedModel) -> None:
    tokens = mechlab.repeated_tokens(smollm2.model, 2, seq_len=20)
    bos = smollm2.tokenizer.bos_token_id
    assert smollm2.info.prepends_bos is False and (tokens[:, 0] == bos).all()
    special = torch.tensor(smollm2.tokenizer.all_special_ids)
    assert not torch.isin(tokens[:, 1:], special).any()


def test_top_induction_heads_match_references(report: mechlab.DetectorReport) -> None:
    """REFERENCES.md: 18.6 0.89, 17.3 0.76, 17.4 0.70, 18.7 0.59, 23.2 0.53."""
    induction = report["induction"]
    top = {row.label: row for row in induction.top(5)}
    assert {"18.6", "17.3", "17.4"} <= top.keys()
    assert induction.top(1)[0].label == "18.6" and 0.8 <= top["18.6"].score <= 0.95
    reference = {"18.6": 0.89, "17.3": 0.76, "17.4": 0.70}
    # Exact chance at seq_len 50: one target among q + 1 sources, q = 51..100, averaged.
    chance = sum(1 / (q + 1) for q in range(51, 101)) / 50
    for label, expected in reference.items():
        row = top[label]
        assert row.verdict == "detected" and abs(row.score - expected) < 0.08
        assert row.high - row.low < 0.2  # 8 sequences pin the mean down
        assert row.control is not None and row.control < 0.1  # content, not position
        assert row.chance == pytest.approx(chance, rel=1e-4)
        assert abs(row.baseline - chance) < 0.03  # the shuffled-position baseline estimates chance


def test_top_previous_token_heads_match_references(report: mechlab.DetectorReport) -> None:
    """REFERENCES.md: 16.0 0.90, 11.1 0.85, 2.1 0.75, 1.2 0.71, 19.3 0.70."""
    top = {row.label: row for row in report["previous-token"].top(5)}
    assert {"16.0", "11.1", "2.1"} <= top.keys()
    assert top["16.0"].score == pytest.approx(0.90, abs=0.05)
    assert all(row.verdict == "detected" for row in top.values())


def test_induction_heads_copy(smollm2: mechlab.LoadedModel, report: mechlab.DetectorReport) -> None:
    """The OV circuits of the strongest induction heads copy tokens, beyond token-shuffled chance."""
    copying = mechlab.run_detectors(smollm2.model, ["copying"], n_samples=4)["copying"]
    null = copying.baseline
    assert float(null.mean.abs().max()) < 0.3  # shuffling token identity leaves no copying
    heads = [(row.layer, row.head) for row in report["induction"].top(4)]
    scores = [float(copying.scores[head]) for head in heads]
    assert sum(scores) / len(scores) > 0.25
    best = next(row for row in copying.rows() if (row.layer, row.head) == (18, 6))
    null_18_6 = copying.baseline_samples[:, 18, 6]
    n = null_18_6.numel()
    bound = float(null_18_6.mean() + t_quantile_975(n - 1) * null_18_6.std() * (1 + 1 / n) ** 0.5)
    assert best.chance == pytest.approx(bound, rel=1e-5) and best.chance > float(null_18_6.max())
    assert best.score > best.chance and best.verdict != "chance"
