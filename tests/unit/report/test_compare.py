"""Comparing two files of one model: identical files agree everywhere; a changed file differs where
it was changed; models of different shapes are refused."""

import pytest
import torch

import mechlab
from mechlab.report.compare import compare_models

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
