"""GGUF files of several architectures load through mechlab with the original model's logits."""

from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.models.bundled import bundled_gguf_path
from tests.integration.gguf_files import write_gguf

VOCAB = 2048  # the first tokens of the SmolLM2 vocabulary, with the merges among them


def tiny_hf(arch: str, tie: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        rope_theta=10000.0,
    )
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
        for layer in model.model.layers:  # Qwen2 has q/k/v biases; make them matter
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "tie", "q8"),
    [("llama", False, False), ("llama", True, True), ("qwen2", False, False)],
    ids=["llama-f32", "llama-tied-q8_0", "qwen2-f32"],
)
def test_gguf_round_trip(arch: str, tie: bool, q8: bool, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    original = tiny_hf(arch, tie)
    path = tmp_path / f"tiny-{arch}.gguf"
    expected = write_gguf(original, path, arch, bundled_gguf_path(), q8_linear=q8)
    original.load_state_dict(expected)  # what the file encodes (Q8_0 round trip included)

    loaded = mechlab.load_model(str(path))
    assert loaded.info.original_architecture == arch
    assert loaded.info.n_kv_heads == 2 and loaded.info.n_heads == 4
    assert ("Q8_0" in loaded.info.quantization) == q8

    tokens = loaded.model.to_tokens("The Eiffel Tower is located in the city of")
    with torch.no_grad():
        reference = original(tokens).logits
    assert torch.allclose(loaded.model(tokens), reference, atol=1e-4, rtol=0)
    _, cache = loaded.model.run_with_cache(tokens, names_filter=[mechlab.Site("k", 1).hook_name])
    assert cache[mechlab.Site("k", 1).hook_name].shape == (1, tokens.shape[1], 2, 16)
