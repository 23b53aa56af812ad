"""The bundled SmolLM2 end to end: loading, hooks, fidelity, the conversion cache, bad inputs."""

import shutil
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab import CorruptModelError, Site
from mechlab.models.bundled import bundled_gguf_path
from tests.unit.models.test_sources import make_store

EIFFEL = "The Eiffel Tower is located in the city of"


def test_info_describes_the_gguf(smollm2) -> None:
    info = smollm2.info
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.d_model, info.d_vocab) == (
        30,
        9,
        3,
        576,
        49152,
    )
    assert info.architecture == "LlamaForCausalLM" and info.original_architecture == "llama"
    assert info.quantization == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert len(info.sha256 or "") == 64
    assert "<|im_start|>" in (info.chat_template or "")
    assert info.prepends_bos is False  # the GGUF says tokenizer.ggml.add_bos_token = false


def test_hook_names_and_shapes(smollm2) -> None:
    model = smollm2.model
    tokens = model.to_tokens(EIFFEL)
    kinds = ("z", "k", "pattern", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post")
    _, cache = model.run_with_cache(tokens, names_filter=[Site(kind, 29).hook_name for kind in kinds])
    assert cache[Site("z", 29).hook_name].shape == (1, tokens.shape[1], 9, 64)
    assert cache[Site("k", 29).hook_name].shape == (1, tokens.shape[1], 3, 64)
    assert cache[Site("pattern", 29).hook_name].shape == (1, 9, tokens.shape[1], tokens.shape[1])
    for kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_post"):
        assert Site(kind, 29).hook_name in cache


@pytest.mark.drift
def test_run_with_cache_equals_plain_forward(smollm2) -> None:
    tokens = smollm2.model.to_tokens(EIFFEL)
    logits, cache = smollm2.model.run_with_cache(tokens)
    assert torch.equal(logits, smollm2.model(tokens))
    resid = cache["blocks.29.hook_resid_post"]
    assert torch.allclose(smollm2.model.ln_final(resid) @ smollm2.model.W_U, logits, atol=1e-4)


def test_greedy_completion_names_paris(smollm2) -> None:
    completion = mechlab.generate(smollm2.model, EIFFEL, max_new_tokens=6)
    assert "Paris" in completion.text
    first = completion.steps[0]
    assert first.text == " Paris" and first.alternatives[0].text == " Paris"
    assert 0.2 < first.prob <= 1.0
    assert completion.tokens.shape[1] == completion.prompt_tokens.shape[1] + len(completion.steps)


def test_chat_template_is_applied(smollm2) -> None:
    text, tokens = mechlab.encode_prompt(smollm2.model, "What is the capital of France?", chat=True)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert tokens[0, 0].item() == smollm2.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert (tokens[0] == tokens[0, 0]).sum() == 3  # system, user, assistant turns; no extra BOS


def test_prompt_longer_than_context_is_refused(smollm2) -> None:
    with pytest.raises(mechlab.InputError, match=r"context holds 8192"):
        mechlab.encode_prompt(smollm2.model, "word " * 9000)


@pytest.mark.drift
def test_verify_matches_transformers_reference(smollm2) -> None:
    report = mechlab.verify(loaded=smollm2)
    assert report.max_abs_dlogprob <= 1e-4, report.summary()
    assert report.top1_agreement == 1.0
    assert report.generation_agreement == 1.0
    assert report.passed and report.n_positions > 40
    assert "Paris" in report.generations[0].hooked


def test_ollama_store_loads_the_same_model(tmp_path: Path, monkeypatch, smollm2) -> None:
    make_store(tmp_path / "ollama", bundled_gguf_path().read_bytes(), name="smollm2", tag="135m")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    loaded = mechlab.load_model("ollama:smollm2:135m")
    assert loaded.info.sha256 == smollm2.info.sha256
    assert loaded.info.from_cache  # same bytes, same converted copy
    tokens = smollm2.model.to_tokens(EIFFEL)
    assert torch.equal(loaded.model(tokens), smollm2.model(tokens))


def test_truncated_copy_of_the_real_file(tmp_path: Path) -> None:
    cut = tmp_path / "smollm2-cut.gguf"
    with bundled_gguf_path().open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(30_000_000))
    with pytest.raises(CorruptModelError, match="truncated or damaged"):
        mechlab.load_model(str(cut))


def test_conversion_is_cached_and_second_load_is_faster(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    statuses: list[str] = []
    first = mechlab.load_model("smollm2", status=statuses.append)
    second = mechlab.load_model("smollm2")
    assert not first.info.from_cache and second.info.from_cache
    assert any("dequantizing tensors 272/272" in s for s in statuses)
    # Measured on 2 cores: ~28 s with the conversion, 3-4 s from the cache (7-9x). 3x leaves room for
    # a machine busy with other work during one of the two loads.
    assert second.info.load_seconds * 3 < first.info.load_seconds, (
        first.info.load_seconds,
        second.info.load_seconds,
    )
    entry = Path(second.info.converted_cache or "")
    assert entry.parent == tmp_path / "cache" / "models" and (entry / "model.safetensors").is_file()
    tokens = first.model.to_tokens(EIFFEL)
    assert torch.equal(first.model(tokens), second.model(tokens))
    leftovers = [p for p in entry.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_hf_directory_source(tmp_path: Path, smollm2) -> None:
    directory = tmp_path / "hf"
    shutil.copytree(smollm2.info.converted_cache or "", directory)
    loaded = mechlab.load_model(str(directory))
    assert loaded.info.kind == "hf" and loaded.info.quantization == {"F32": 272}
    tokens = smollm2.model.to_tokens(EIFFEL)
    assert torch.equal(loaded.model(tokens), smollm2.model(tokens))
