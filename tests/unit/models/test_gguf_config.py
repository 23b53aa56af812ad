"""The config fields llama.cpp reads from GGUF metadata and transformers' loader leaves at defaults."""

import math
from pathlib import Path

import gguf
import numpy as np
import pytest

import mechlab
from mechlab.errors import UnsupportedArchitectureError
from mechlab.models.gguf import read_header
from mechlab.models.gguf_config import _llama3_divisors, llama3_rope, overrides


def gemma(arch: str, **extra: object) -> dict[str, object]:
    metadata: dict[str, object] = {
        f"{arch}.block_count": 6,
        f"{arch}.embedding_length": 256,
        f"{arch}.attention.head_count": 8,
        f"{arch}.attention.key_length": 32,
        f"{arch}.attention.sliding_window": 4,
    }
    metadata.update({f"{arch}.{k}": v for k, v in extra.items()})
    return metadata


def test_a_gemma_query_scale_is_the_head_size_as_in_llama_cpp() -> None:
    """No GGUF key carries Gemma's query scale; llama.cpp uses the head size (transformers' loader
    would keep query_pre_attn_scalar at 256)."""
    assert overrides("gemma3", gemma("gemma3"), {}, source="g")["query_pre_attn_scalar"] == 32
    assert overrides("gemma2", gemma("gemma2"), {}, source="g")["query_pre_attn_scalar"] == 32


@pytest.mark.parametrize(("arch", "layers"), [("gemma2", 46), ("gemma3", 62)])
def test_the_gemma_27b_models_scale_queries_by_the_width_per_head(arch: str, layers: int) -> None:
    metadata = gemma(arch, block_count=layers, embedding_length=5376, **{"attention.head_count": 32})
    assert overrides(arch, metadata, {}, source="g")["query_pre_attn_scalar"] == 168


def test_gemma2_soft_capping_comes_from_the_file_or_llama_cpp_defaults() -> None:
    fields = overrides("gemma2", gemma("gemma2", attn_logit_softcapping=5.0), {}, source="g")
    assert (fields["attn_logit_softcapping"], fields["final_logit_softcapping"]) == (5.0, 30.0)
    assert fields["layer_types"][:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    metadata = gemma("gemma2")
    del metadata["gemma2.attention.sliding_window"]
    assert overrides("gemma2", metadata, {}, source="g")["sliding_window"] == 4096


def test_gemma3_sliding_layers_follow_llama_cpp_s_pattern() -> None:
    fields = overrides("gemma3", gemma("gemma3", block_count=7), {}, source="g")
    assert fields["layer_types"] == ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"]
    pattern = gemma("gemma3", **{"attention.sliding_window_pattern": 2})
    assert overrides("gemma3", pattern, {}, source="g")["layer_types"][:2] == [
        "sliding_attention",
        "full_attention",
    ]
    flags = gemma("gemma3", **{"attention.sliding_window_pattern": [True, False] * 3})
    assert overrides("gemma3", flags, {}, source="g")["layer_types"][1] == "full_attention"
    no_window = gemma("gemma3")
    del no_window["gemma3.attention.sliding_window"]
    assert set(overrides("gemma3", no_window, {}, source="g")["layer_types"]) == {"full_attention"}


def test_gemma3_rope_bases_and_linear_scaling_of_global_layers() -> None:
    metadata = gemma(
        "gemma3",
        **{"rope.freq_base": 1e6, "rope.freq_base_swa": 5000.0, "rope.scaling.type": "linear"},
        **{"rope.scaling.factor": 8.0},
    )
    rope = overrides("gemma3", metadata, {}, source="g")["rope_parameters"]
    assert rope["sliding_attention"] == {"rope_type": "default", "rope_theta": 5000.0}
    assert rope["full_attention"] == {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}


def test_head_sizes_and_positions_the_loader_does_not_map() -> None:
    assert overrides("llama", {"llama.attention.key_length": 128}, {}, source="l") == {"head_dim": 128}
    assert overrides("gpt2", {"gpt2.context_length": 256}, {}, source="g") == {"n_positions": 256}
    assert overrides("phi3", {"phi3.attention.sliding_window": 2047}, {}, source="p") == {
        "sliding_window": None
    }
    assert overrides("qwen2", {"qwen2.rope.freq_base": 1e6}, {}, source="q") == {}


@pytest.mark.parametrize(
    ("metadata", "tensors", "names"),
    [
        (
            {"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0},
            {},
            r"yarn scaling \(factor 4\)",
        ),
        ({}, {"rope_factors_long.weight": [1.0], "rope_factors_short.weight": [1.0]}, "rope_factors_long"),
        ({}, {"rope_freqs.weight": [1.0, 3.0, 2.0, 9.0]}, "match no Llama 3 scaling"),
    ],
)
def test_rope_scaling_transformers_cannot_express_is_refused(
    metadata: dict[str, object], tensors: dict[str, object], names: str
) -> None:
    arch = "qwen2" if metadata else "llama"
    metadata = {**metadata, f"{arch}.rope.dimension_count": 8}
    with pytest.raises(UnsupportedArchitectureError, match=rf"(?s)m\.gguf holds a '{arch}' model .*{names}"):
        overrides(arch, metadata, tensors, source="m.gguf")


@pytest.mark.parametrize(
    ("factor", "original", "base", "dims"), [(8.0, 8192, 500000.0, 128), (32.0, 8192, 500000.0, 64)]
)
def test_llama3_rope_is_recovered_from_llama_cpp_s_divisors(
    factor: float, original: int, base: float, dims: int
) -> None:
    """Llama 3.1 8B's and Llama 3.2 1B's RoPE scaling, as llama.cpp's converter stores it (float32)."""
    params = {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    params["original_max_position_embeddings"] = original
    wavelengths = [2 * math.pi * base ** (2 * i / dims) for i in range(dims // 2)]
    divisors = np.float32(_llama3_divisors(params, wavelengths))
    fields = overrides(
        "llama",
        {"llama.rope.freq_base": base, "llama.rope.dimension_count": dims},
        {"rope_freqs.weight": divisors},
        source="l",
    )
    rope = fields["rope_parameters"]
    assert rope["rope_type"] == "llama3" and rope["original_max_position_embeddings"] == original
    assert rope["factor"] == factor and rope["high_freq_factor"] == pytest.approx(4.0, rel=1e-5)
    truncated = [float(d) for d in divisors[:-1]]
    assert llama3_rope(truncated, base, dims) is None


def write_gguf(path: Path, arch: str, **metadata: object) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_embedding_length(4)
    writer.add_feed_forward_length(8)
    writer.add_head_count(1)
    for key, value in metadata.items():
        if isinstance(value, str):
            writer.add_string(f"{arch}.{key}", value)
        else:
            writer.add_float32(f"{arch}.{key}", float(value))  # type: ignore[arg-type]
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_file_with_unconvertible_rope_scaling_is_refused_before_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    path = write_gguf(
        tmp_path / "m.gguf", "qwen2", **{"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0}
    )
    header = read_header(path)  # the header still reads (mechlab info shows it)
    assert header.unconvertible is not None and header.config == {}
    with pytest.raises(UnsupportedArchitectureError, match=r"llama\.cpp encodes with yarn scaling"):
        mechlab.load_model(str(path))
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_a_copy_converted_by_an_older_mechlab_is_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses
    import json

    from mechlab.models import gguf as gguf_module

    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[Path] = []

    def fake_convert(path: Path, header: gguf_module.GGUFHeader, out: Path, **kwargs: object) -> None:
        calls.append(out)
        out.mkdir()
        (out / gguf_module.HEADER_FILE).write_text(json.dumps(dataclasses.asdict(header)))

    monkeypatch.setattr(gguf_module, "convert", fake_convert)
    path = write_gguf(tmp_path / "m.gguf", "llama")
    target, header, _, cached = gguf_module.ensure_converted(path, status=lambda _: None)
    assert not cached and header.conversion == gguf_module.CONVERSION_VERSION
    assert gguf_module.ensure_converted(path, status=lambda _: None)[3]  # now a cache hit
    old = {k: v for k, v in json.loads((target / gguf_module.HEADER_FILE).read_text()).items()}
    for key in ("config", "unconvertible", "conversion"):
        del old[key]  # what a header written before the conversion version looks like
    (target / gguf_module.HEADER_FILE).write_text(json.dumps(old))
    assert not gguf_module.ensure_converted(path, status=lambda _: None)[3]
    assert len(calls) == 2
