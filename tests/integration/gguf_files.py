"""Write small GGUF files the way llama.cpp's converter does, from tiny Hugging Face models.

The tokenizer metadata is copied from the bundled SmolLM2 GGUF (``mechlab.toy.big_gguf.copy_tokenizer``,
shared with the big random-weight files); the weights are those of a tiny seeded transformers model,
with llama.cpp's Q/K row permutation applied for llama-family files and optionally quantized to Q8_0
with gguf-py. Loading such a file through mechlab must reproduce the tiny model's logits, which checks
tensor mapping, the permutation and dequantization end to end.
"""

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from mechlab.toy.big_gguf import copy_tokenizer


def llama_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (interleaved → halves rotary layout)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(
    model: Any, path: Path, arch: str, tokenizer_source: Path, *, q8_linear: bool = False
) -> dict[str, torch.Tensor]:
    """Write ``model`` (a tiny LlamaForCausalLM / Qwen2ForCausalLM) as GGUF ``arch``.

    Returns the state dict the file encodes (after Q8_0 round-trip where quantized), i.e. what a
    faithful loader must reconstruct.
    """
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // n_head)
    writer.add_vocab_size(cfg.vocab_size)
    copy_tokenizer(writer, tokenizer_source, cfg.vocab_size)

    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    permute = arch == "llama"
    for key, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if key == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif key == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif key == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue  # llama.cpp stores tied output weights once, as token_embd
            gguf_name = "output.weight"
        else:
            _, _, layer, rest = key.split(".", 3)
            module, _, kind = rest.rpartition(".")
            gguf_name = f"blk.{layer}.{names[module]}.{kind}"
            if permute and module in ("self_attn.q_proj", "self_attn.k_proj"):
                array = llama_permute(array, n_head if module == "self_attn.q_proj" else n_kv)
        if q8_linear and array.ndim == 2 and key != "model.embed_tokens.weight":
            packed = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            restored = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0)
            if permute and ("attn_q" in gguf_name or "attn_k" in gguf_name):
                heads = n_head if "attn_q" in gguf_name else n_kv
                restored = _unpermute(restored, heads)
            expected[key] = torch.from_numpy(restored.copy()).reshape(tensor.shape)
        else:
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def _unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    dim = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, dim, 2, *weight.shape[1:]).swapaxes(2, 1).reshape(weight.shape)
