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

PROMPTS = ("The Eiffel Tower is located in the city of", "def fibonacci(n):\n    if n < 2:\n        return")
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


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_agrees_with_llama_cpp_layer_by_layer(smollm2, tmp_path: Path) -> None:
    report = mechlab.verify(
        loaded=smollm2, reference="llamacpp", layers=True, prompts=PROMPTS, max_new_tokens=2
    )
    assert [row.layer for row in report.layers] == list(range(30))
    for row in report.layers:
        assert set(row.errors) == {"attn_out", "resid_mid", "mlp_out", "resid_post"}
        # llama.cpp's activation quantization alone: a few percent at most, never zero.
        assert all(1e-4 < (error or 0) < 0.1 for error in row.errors.values()), row
        assert (row.errors["resid_post"] or 0) < 0.04
    assert report.first_divergence is None and report.passed
    page = report.page().save(tmp_path / "verify.html").read_text()
    assert "resid_post" in page and "<img" in page


@pytest.mark.smollm2
def test_a_disagreement_shows_the_layer_where_it_starts(smollm2) -> None:
    """A hooked model whose layer-12 attention output is off by half (a conversion bug confined to one
    block) agrees with llama.cpp up to layer 11 and diverges from layer 12 on."""
    wrong = {mechlab.Site("attn_out", 12): lambda act, site: act * 1.5}
    with mechlab.hooked(smollm2.model, wrong):
        report = mechlab.verify(
            loaded=smollm2, reference="llamacpp", layers=True, prompts=PROMPTS, max_new_tokens=2
        )
    assert report.first_divergence == 12, report.summary()
    assert not any(row.diverges for row in report.layers[:12])
    assert report.layers[12].errors["attn_out"] > 0.3  # type: ignore[operator]
    assert "the tensors first differ beyond 15% at layer 12" in report.summary()


@pytest.mark.slow
@pytest.mark.smollm2
def test_the_cli_prints_the_layer_table_and_writes_the_page(tmp_path: Path, capsys) -> None:
    html = tmp_path / "verify.html"
    assert (
        main(
            [
                "verify",
                "smollm2",
                "--reference",
                "llamacpp",
                "--layers",
                "--max-new-tokens",
                "2",
                "--html",
                str(html),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "resid_post" in out and "│ 29" in out and "every layer's tensors within" in " ".join(out.split())
    assert html.is_file()
