"""The model commands on SmolLM2: `mechlab info`, `mechlab generate` (plain and `--chat`) and
`mechlab verify`, including verify's non-zero exit when the hooked model drifts from its reference."""

import re
import shutil
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab import cli
from tests.tiny_llama import save_tiny_llama

EIFFEL = "The Eiffel Tower is located in the city of"


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    """Captured stdout with rich's line wrapping undone (runs of whitespace become one space)."""
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich reads the width from COLUMNS when not on a terminal


def test_info_command_describes_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "smollm2"]) == 0
    out = printed(capsys)
    assert "LlamaForCausalLM (original: llama)" in out
    assert "30 × 9 (3 key/value heads)" in out
    assert "Q4_1 ×210, F32 ×61, Q8_0 ×1" in out
    assert "chat template yes" in out


def test_generate_command_continues_the_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["generate", "smollm2", EIFFEL, "--max-new-tokens", "3"]) == 0
    out = printed(capsys)
    assert f"{EIFFEL} Paris" in out
    assert "<|im_start|>" not in out


def test_generate_chat_wraps_the_prompt_in_the_chat_template(capsys: pytest.CaptureFixture[str]) -> None:
    question = "What is the capital of France?"
    assert cli.main(["generate", "smollm2", question, "--chat", "--max-new-tokens", "3"]) == 0
    out = printed(capsys)
    # The printed prompt is the text the model saw: system turn, the user's turn, an open assistant turn.
    assert re.search(
        rf"<\|im_start\|>system .*<\|im_end\|> <\|im_start\|>user {re.escape(question)}<\|im_end\|> "
        r"<\|im_start\|>assistant",
        out,
    ), out


def test_verify_command_passes_on_smollm2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "smollm2", "--max-new-tokens", "4"]) == 0
    out = printed(capsys)
    found = re.search(r"PASS: .* max \|Δ log-prob\| (\S+) \(tolerance 1e-04\)", out)
    assert found, out
    assert float(found.group(1)) <= 1e-4
    assert "top-1 agreement 100.0%" in out


@pytest.fixture
def tiny_llama_dir(tmp_path: Path, smollm2: mechlab.LoadedModel) -> Path:
    """A seeded 1-layer Llama with SmolLM2's tokenizer, saved as a Hugging Face directory: verify
    on it takes a second, where a second SmolLM2 reference would take ~25 s."""
    directory = save_tiny_llama(
        tmp_path / "tiny-llama",
        vocab_size=smollm2.info.d_vocab,
        num_hidden_layers=1,
        max_position_embeddings=128,
    )
    converted = Path(smollm2.info.converted_cache or "")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (converted / name).is_file():
            shutil.copy(converted / name, directory / name)
    return directory


def test_verify_command_fails_when_the_hooked_model_drifts(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    load_model = mechlab.load_model

    def drifted(*args: object, **kwargs: object) -> mechlab.LoadedModel:
        loaded = load_model(*args, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():  # a fresh copy: no shared fixture is changed
            loaded.model.original_model.model.norm.weight.mul_(1.5)
        return loaded

    monkeypatch.setattr(mechlab, "load_model", drifted)
    assert cli.main(["verify", str(tiny_llama_dir), "--max-new-tokens", "2"]) == 1
    out = printed(capsys)
    found = re.search(r"FAIL: .* max \|Δ log-prob\| (\S+) \(tolerance 1e-04\)", out)
    assert found, out
    assert float(found.group(1)) > 1e-4
