"""A seeded tiny llama-layout GGUF file written with gguf-py: enough for the write-back to act on."""

from pathlib import Path

import gguf
import numpy as np

D_MODEL, D_MLP, VOCAB, N_LAYERS = 64, 96, 40, 3


def tensors(seed: int = 0, *, free_dim: int | None = None) -> dict[str, np.ndarray]:
    """Float32 weights ``[rows, row width]`` (GGUF's ``[ne1, ne0]``), llama.cpp's names. With
    ``free_dim``, no tensor writes to that residual dimension (its rows and columns are zero)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"token_embd.weight": rng.standard_normal((VOCAB, D_MODEL))}
    for n in range(N_LAYERS):
        out[f"blk.{n}.attn_norm.weight"] = 1 + 0.1 * rng.standard_normal(D_MODEL)
        for name in ("attn_q", "attn_k", "attn_v"):
            out[f"blk.{n}.{name}.weight"] = rng.standard_normal((D_MODEL, D_MODEL)) * 0.1
        out[f"blk.{n}.attn_output.weight"] = rng.standard_normal((D_MODEL, D_MODEL)) * 0.1
        out[f"blk.{n}.ffn_norm.weight"] = 1 + 0.1 * rng.standard_normal(D_MODEL)
        out[f"blk.{n}.ffn_gate.weight"] = rng.standard_normal((D_MLP, D_MODEL)) * 0.1
        out[f"blk.{n}.ffn_up.weight"] = rng.standard_normal((D_MLP, D_MODEL)) * 0.1
        out[f"blk.{n}.ffn_down.weight"] = rng.standard_normal((D_MODEL, D_MLP)) * 0.1
    out["output_norm.weight"] = np.ones(D_MODEL)
    if free_dim is not None:
        out["token_embd.weight"][:, free_dim] = 0
        for n in range(N_LAYERS):
            out[f"blk.{n}.attn_output.weight"][free_dim] = 0
            out[f"blk.{n}.ffn_down.weight"][free_dim] = 0
    return {k: v.astype(np.float32) for k, v in out.items()}


def write(
    path: Path,
    weights: dict[str, np.ndarray],
    *,
    architecture: str = "llama",
    matrix_type: str = "F32",
    embedding_type: str = "F32",
) -> Path:
    """Write ``weights`` as a GGUF file: matrices in ``matrix_type``, the embedding in
    ``embedding_type``, 1-D tensors in F32 (gguf-py's quantizers)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(N_LAYERS)
    writer.add_embedding_length(D_MODEL)
    writer.add_feed_forward_length(D_MLP)
    writer.add_head_count(4)
    writer.add_context_length(64)
    writer.add_string("general.name", "tiny write-back test")
    for name, values in weights.items():
        kind = embedding_type if name == "token_embd.weight" else matrix_type if values.ndim == 2 else "F32"
        qtype = gguf.GGMLQuantizationType[kind]
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file, dequantized to float64 ``[rows, row width]``."""
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = np.asarray(values, dtype=np.float64).reshape(tuple(int(d) for d in reversed(t.shape)))
    return out


def raw(path: Path) -> dict[str, bytes]:
    """Every tensor's bytes as stored."""
    return {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(path)).tensors}
