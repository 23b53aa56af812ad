"""Quantization forensics on SmolLM2: its Q4_1 file against llama.cpp's re-quantizations of it."""

import importlib.util
import json
from pathlib import Path

import pytest

import mechlab
from mechlab.cli import main
from mechlab.models.bundled import bundled_gguf_path

# Slow tier (make test-slow, which CI runs): two models, a re-quantization and detectors per test.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.llamacpp,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python"),
]


def test_q8_0_keeps_the_model_and_its_circuits(smollm2: mechlab.LoadedModel) -> None:
    q8 = mechlab.load_model(str(mechlab.requantized(bundled_gguf_path(), "Q8_0")))
    assert "Q8_0" in q8.info.quantization_summary
    result = mechlab.compare_models(smollm2, q8)
    assert result.mean_kl < 0.02 and result.top1_agreement > 0.9, result.summary()
    assert max(result.layers["resid_post"]) < 0.1
    assert "18.6" in result.detected_b["induction"] and "16.0" in result.detected_b["previous-token"]


def test_q2_k_degrades_it_and_the_cli_says_where(tmp_path: Path, capsys) -> None:
    html, data = tmp_path / "compare.html", tmp_path / "compare.json"
    argv = ["compare", "smollm2", "--requantize", "Q2_K", "--html", str(html), "--json", str(data)]
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    result = json.loads(data.read_text())
    # Requantizing Q4_1 to llama.cpp's Q2_K mix (Q4_0 where rows are not multiples of 256, Q3_K/Q2_K
    # elsewhere) costs far more than Q8_0: a mean KL of tenths of a nat, top-1 well under 90%.
    assert result["mean_kl"] > 0.2 and result["top1_agreement"] < 0.8
    resid = result["layers"]["resid_post"]
    assert resid[-1] > resid[0] > 0.05  # the error grows through the stack
    assert "18.6" in result["detected_b"]["induction"]  # the strongest induction head survives
    assert "induction:" in out and "detected heads kept" in out and html.is_file()
