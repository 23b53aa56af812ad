"""Gemma 3 270M (Q4_K_M, from the registry's chunk packages): load, verify against both references,
detect, attribute and explain, with the numbers this model gives."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.models.bundled import GEMMA3_270M
from mechlab.report.settings import ExplainSettings

EIFFEL = "The Eiffel Tower is located in the city of"
# Slow tier (make test-slow, which CI runs): a 262,144-token vocabulary makes every step heavy.
pytestmark = [pytest.mark.gemma3, pytest.mark.slow]


def test_loads_from_the_joined_chunks(gemma3: mechlab.LoadedModel) -> None:
    info = gemma3.info
    assert info.sha256 == GEMMA3_270M.sha256
    assert (
        Path(info.path or "").name == "gemma-3-270m-q4_k_m.gguf" and "bundled" in Path(info.path or "").parts
    )
    assert info.original_architecture == "gemma3" and (info.n_layers, info.n_heads, info.n_kv_heads) == (
        18,
        4,
        1,
    )
    assert "Q4_K" in info.quantization and info.d_vocab == 262144
    top = mechlab.next_token_alternatives(gemma3.model, mechlab.as_tokens(gemma3.model, EIFFEL), 2)
    assert top[0].text == " Paris" and 0.7 < top[0].prob < 0.82


def test_agrees_with_transformers(gemma3: mechlab.LoadedModel) -> None:
    report = mechlab.verify(loaded=gemma3, max_new_tokens=4)
    assert report.passed and report.max_abs_dlogprob < 1e-4, report.summary()


@pytest.mark.llamacpp
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_agrees_with_llama_cpp_layer_by_layer(gemma3: mechlab.LoadedModel) -> None:
    """../shared/REFERENCES.md: mean KL ≈ 0.008 nats, top-1 100% on six prompts (llama.cpp's
    activation-quantization floor); on verify's four prompts 5.3e-3.
    Gemma's post-norms: llama.cpp's attn_post_norm / ffn_post_norm are the hooks' attn_out / mlp_out."""
    report = mechlab.verify(loaded=gemma3, reference="llamacpp", layers=True, max_new_tokens=2)
    assert report.passed and report.mean_kl < 0.01 and report.top1_agreement == 1.0, report.summary()
    assert [row.layer for row in report.layers] == list(range(18))
    assert report.first_divergence is None
    assert all(row.errors["resid_post"] < 0.05 for row in report.layers)  # type: ignore[operator]


def test_detectors_find_induction_and_previous_token_heads(gemma3: mechlab.LoadedModel) -> None:
    report = mechlab.run_detectors(gemma3.model, ["induction", "previous-token"], n_samples=8)
    induction, previous = report["induction"].top(1)[0], report["previous-token"].top(1)[0]
    assert (induction.label, induction.verdict) == ("5.1", "detected") and induction.score > 0.8
    assert (previous.label, previous.verdict) == ("2.3", "detected") and previous.score > 0.6


def test_integrated_gradients_complete_on_paris(gemma3: mechlab.LoadedModel) -> None:
    tokens = mechlab.as_tokens(gemma3.model, EIFFEL)
    result = mechlab.integrated_gradients(gemma3.model, tokens, mechlab.make_target(gemma3.model, " Paris"))
    assert result.completeness_error is not None and result.completeness_error < 0.01
    assert result.baseline_value is not None
    total = float(result.scores.double().sum())
    assert math.isfinite(total) and total == pytest.approx(result.value - result.baseline_value, rel=0.01)


def test_explain_writes_a_report(gemma3: mechlab.LoadedModel, tmp_path: Path) -> None:
    settings = ExplainSettings(max_new_tokens=2, detectors=("induction",), detector_samples=2, top_heads=2)
    explanation = mechlab.explain(gemma3, EIFFEL, settings=settings)
    assert explanation.chosen_text == " Paris"
    assert explanation.target.label and explanation.heads
    with torch.no_grad():
        logits = gemma3.model(explanation.context)[0, -1]
    difference = float(logits[explanation.chosen] - logits[explanation.contrast])
    assert explanation.dla.value == pytest.approx(difference, rel=1e-3, abs=1e-3)
    text = explanation.save(tmp_path / "report.html").read_text()
    assert "Eiffel" in text and "Paris" in text and "gemma-3-270m-q4_k_m.gguf" in text
