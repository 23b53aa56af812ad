"""llama.cpp as the reference: the runtime itself, on the same GGUF file and token ids."""

import importlib.util
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.cli import main
from mechlab.models.bundled import bundled_gguf_path
from mechlab.models.references import llamacpp
from tests.integration.gguf_files import write_gguf
from tests.integration.test_gguf_architectures import tiny_hf

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (make install-llamacpp)"
    ),
]


@pytest.mark.smollm2
def test_smollm2_agrees_with_llama_cpp_within_its_activation_quantization(smollm2) -> None:
    report = mechlab.verify(loaded=smollm2, reference="llamacpp")
    assert report.runtime and report.passed, report.summary()
    assert report.n_positions == 45
    # The known floor for a Q4_1 file (llama.cpp quantizes activations): a few thousandths of a nat.
    assert 1e-4 < report.mean_kl <= 0.01 and report.top1_agreement >= 0.9
    assert report.reference == "llama.cpp running SmolLM2-135M-Instruct.Q4_1.gguf"
    assert report.generations[0].hooked.startswith(" Paris") and report.generations[0].reference.startswith(
        " Paris"
    )


@pytest.mark.smollm2
def test_the_cli_compares_with_llama_cpp(capsys) -> None:
    assert main(["verify", "smollm2", "--reference", "llamacpp"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "PASS: hooked model vs llama.cpp running SmolLM2-135M-Instruct.Q4_1.gguf" in out


def test_an_f32_file_agrees_with_llama_cpp_almost_exactly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny-llama.gguf"
    write_gguf(tiny_hf("llama", tie=False), path, "llama", bundled_gguf_path())
    report = mechlab.verify(
        str(path), reference="llamacpp", prompts=("The Eiffel Tower is in", "One two three")
    )
    assert report.passed and report.top1_agreement == 1.0
    assert report.mean_kl < 1e-4, report.summary()  # no weight quantization: only float rounding


def test_a_conversion_bug_is_caught(tmp_path: Path, monkeypatch) -> None:
    """A hooked model that differs from the file (the final norm's weights off) fails against llama.cpp."""
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny-llama.gguf"
    write_gguf(tiny_hf("llama", tie=False), path, "llama", bundled_gguf_path())
    loaded = mechlab.load_model(str(path))
    with torch.no_grad():
        loaded.model.original_model.model.norm.weight.mul_(8.0)  # every logit scaled: a sharper model
    report = mechlab.verify(loaded=loaded, reference="llamacpp", prompts=("The Eiffel Tower is in",))
    assert not report.passed and report.mean_kl > llamacpp.MAX_MEAN_KL, report.summary()


def test_llama_cpp_needs_a_gguf_source() -> None:
    with pytest.raises(mechlab.InputError, match=r"llama\.cpp runs GGUF files"):
        mechlab.verify("toy:tiny", reference="llamacpp")
