"""Quantized mode: GGUF blocks dequantized as they are used, equal to the float route."""

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

import mechlab
from mechlab.errors import InputError, UnsupportedArchitectureError
from mechlab.models import ggml_matmul, quantized
from mechlab.models.bundled import bundled_gguf_path
from mechlab.models.quantized import QuantizedEmbedding, QuantizedLinear, QuantizedMatrix
from tests.integration.gguf_files import write_gguf
from tests.integration.test_gguf_architectures import tiny_hf

# Byte offsets of each block format's float16 fields (scales, minimums); the rest are packed integers.
_HALF_FIELDS = {
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q5_1: (0, 2),
    Q.Q8_0: (0,),
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
    Q.IQ4_NL: (0,),
    Q.IQ4_XS: (0,),
}


def random_blocks(qtype: Q, rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """Random packed integers with finite float16 scales: ``[rows, bytes per row]``."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * columns // block_size, type_size), dtype=np.uint8)
    for offset in _HALF_FIELDS[qtype]:
        half = rng.uniform(-0.05, 0.05, size=blocks.shape[0]).astype(np.float16)
        blocks[:, offset : offset + 2] = half.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, columns // block_size * type_size)


def test_every_kept_type_has_a_test() -> None:
    assert set(quantized.kept_types()) == {t.name for t in _HALF_FIELDS} | {"F32", "F16", "BF16"}


@pytest.mark.parametrize("qtype", list(_HALF_FIELDS), ids=lambda t: t.name)
def test_dequantize_equals_gguf_py(qtype: Q) -> None:
    blocks = random_blocks(qtype, 6, 512)
    expected = gguf.quants.dequantize(blocks, qtype)
    found = quantized.dequantize(torch.from_numpy(blocks), qtype, 512, torch.float32)
    assert found.shape == (6, 512)
    np.testing.assert_allclose(found.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert np.abs(expected).max() > 0  # the blocks are not all zero


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.F32], ids=lambda t: t.name)
def test_float_rows_are_viewed_not_converted(qtype: Q) -> None:
    values = torch.randn(4, 32)
    dtype = {Q.F16: torch.float16, Q.BF16: torch.bfloat16, Q.F32: torch.float32}[qtype]
    raw = values.to(dtype).view(torch.uint8)
    assert torch.equal(quantized.dequantize(raw, qtype, 32, torch.float32), values.to(dtype).float())


def _linear(qtype: Q = Q.Q4_K, rows: int = 48, columns: int = 256) -> tuple[QuantizedLinear, torch.Tensor]:
    matrix = QuantizedMatrix(torch.from_numpy(random_blocks(qtype, rows, columns)).clone(), qtype, columns)
    return QuantizedLinear(matrix), matrix.weight


def test_linear_forward_and_input_gradient_equal_a_float_linear() -> None:
    module, weight = _linear()
    x = torch.randn(2, 5, 256, requires_grad=True)
    out = module(x)
    out.pow(2).sum().backward()
    x_float = x.detach().clone().requires_grad_(True)
    reference = x_float @ weight.T
    reference.pow(2).sum().backward()
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_float.grad, rtol=1e-5, atol=1e-4)


def test_chunking_does_not_change_results() -> None:
    module, _ = _linear(rows=50)
    x = torch.randn(3, 256, requires_grad=True)
    whole = module(x)
    (grad_whole,) = torch.autograd.grad(whole.sum(), x)
    with quantized.chunk_elements(256 * 7):  # 7 rows per chunk: 8 chunks, the last one short
        chunked = module(x)
        (grad_chunked,) = torch.autograd.grad(chunked.sum(), x)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(grad_chunked, grad_whole)


def test_backward_keeps_no_dequantized_matrix() -> None:
    """Autograd saves the input only: a linear that saved its dequantized weight would show here."""
    module, _ = _linear(rows=64, columns=512)
    saved: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    x = torch.randn(4, 512, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(x).sum().backward()
    assert (64, 512) not in saved and (512, 64) not in saved
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_embedding_dequantizes_the_rows_it_reads() -> None:
    blocks = torch.from_numpy(random_blocks(Q.Q8_0, 20, 64))
    table = QuantizedMatrix(blocks, Q.Q8_0, 64)
    embedding = QuantizedEmbedding(table, torch.tensor(2.0))
    ids = torch.tensor([[3, 19, 3], [0, 7, 11]])
    assert torch.equal(embedding(ids), table.weight[ids] * 2.0)


def test_shapes_only_reads_no_weights() -> None:
    module, weight = _linear()
    with quantized.shapes_only():
        assert module.weight.is_meta and module.weight.shape == (48, 256)
    assert torch.equal(module.weight, weight)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tied Llama with Q8_0 matrices (its embedding stays F32) in the llama.cpp layout."""
    path = tmp_path_factory.mktemp("quantized") / "tiny-llama-q8.gguf"
    write_gguf(tiny_hf("llama", tie=True), path, "llama", bundled_gguf_path(), q8_linear=True)
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_quantized_mode_matches_the_float_route(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / f"tiny-{arch}.gguf"
    write_gguf(tiny_hf(arch, tie=arch == "llama"), path, arch, bundled_gguf_path(), q8_linear=True)
    floats = mechlab.load_model(str(path))
    kept = mechlab.load_model(str(path), weights="quantized")
    assert kept.info.weights == "quantized" and floats.info.weights == "float32"
    with quantized.kernels("float"):  # the same float arithmetic as the float32 route
        _same_as_float(kept, floats)


def _same_as_float(kept: mechlab.LoadedModel, floats: mechlab.LoadedModel) -> None:
    q_proj = kept.model.blocks[0].attn.q.original_component
    assert isinstance(q_proj, QuantizedLinear) and q_proj.matrix.storage == "Q8_0"
    if q_proj.bias is not None:  # Qwen2: biases load as float parameters beside the kept matrix
        assert q_proj.bias.abs().sum() > 0
    tokens = floats.model.to_tokens("The Eiffel Tower is located in the city of")
    with torch.no_grad():
        expected, expected_cache = floats.model.run_with_cache(tokens)
        found, found_cache = kept.model.run_with_cache(tokens)
    assert sorted(found_cache.keys()) == sorted(expected_cache.keys())
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        found_cache["blocks.1.attn.hook_z"], expected_cache["blocks.1.attn.hook_z"], rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(kept.model.W_Q, floats.model.W_Q, rtol=1e-6, atol=1e-6)


def test_quantized_modules_replace_the_matrices(
    tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    model = mechlab.load_model(str(tiny_file), weights="quantized").model
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear" not in kinds and "Embedding" not in kinds
    # The tied head reads the embedding's table (F32 here: kept as float rows, not a parameter copy).
    head, embedding = model.unembed.original_component, model.embed.original_component
    assert isinstance(head, QuantizedLinear) and isinstance(embedding, QuantizedEmbedding)
    assert head.matrix is embedding.matrix
    matrices = [t for t in gguf.GGUFReader(str(tiny_file)).tensors if len(t.shape) == 2]
    assert quantized.quantized_bytes(model) == sum(int(t.n_bytes) for t in matrices)  # the head: once


def test_bad_modes_are_refused(tiny_file: Path) -> None:
    with pytest.raises(InputError, match="toy source, which has none"):
        mechlab.load_model("toy:tiny", weights="quantized")
    with pytest.raises(InputError, match=r"Unknown weights mode 'int3'.*quantized"):
        mechlab.load_model(str(tiny_file), weights="int3")
    with pytest.raises(InputError, match=r"dtype=torch\.float16 was passed too"):
        mechlab.load_model(str(tiny_file), weights="bfloat16", dtype=torch.float16)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2 model; quantized mode loads llama"):
        quantized.check_architecture("gpt2", tiny_file)


def test_the_memory_plan_has_the_quantized_mode(tiny_file: Path) -> None:
    plan = mechlab.plan_memory(str(tiny_file), available=64 * 1024**3)
    assert plan["quantized"].weights == tiny_file.stat().st_size
    assert plan["quantized"].weights < plan["float32"].weights


needs_llamacpp = pytest.mark.skipif(not ggml_matmul.available(), reason="llama-cpp-python is not installed")


@needs_llamacpp
@pytest.mark.parametrize(
    "qtype", [t for t in _HALF_FIELDS if t not in (Q.IQ4_NL, Q.IQ4_XS)], ids=lambda t: t.name
)
def test_llamacpp_kernel_equals_the_product_up_to_its_8_bit_activations(qtype: Q) -> None:
    module, weight = _linear(qtype, rows=40, columns=512)
    x = torch.randn(7, 512)
    assert module.matrix.native()
    with torch.no_grad():
        found = module(x)
    expected = x @ weight.T
    relative = float((found - expected).norm() / expected.norm())
    assert 0 < relative < 0.02  # llama.cpp rounds the activations to 8 bits: close, not equal


@needs_llamacpp
@pytest.mark.parametrize(
    "qtype", [t for t in _HALF_FIELDS if t not in (Q.IQ4_NL, Q.IQ4_XS)], ids=lambda t: t.name
)
def test_llamacpp_dequantizes_rows_as_torch_does(qtype: Q) -> None:
    blocks = torch.from_numpy(random_blocks(qtype, 30, 512, seed=3)).clone()
    matrix = QuantizedMatrix(blocks, qtype, 512)
    index = torch.tensor([29, 0, 7, 7])
    expected = quantized.dequantize(blocks[index], qtype, 512, torch.float32)
    assert torch.equal(matrix.rows_of(index, torch.float32), expected)
    with pytest.raises(IndexError, match="out of range: the matrix has 30 rows"):
        matrix.rows_of(torch.tensor([30]), torch.float32)  # refused before llama.cpp could abort


@needs_llamacpp
def test_passes_with_gradients_and_float_kernels_compute_in_float() -> None:
    module, weight = _linear(Q.Q4_K)
    x = torch.randn(3, 256)
    expected = x @ weight.T
    with torch.no_grad():
        native = module(x)
    assert not torch.allclose(native, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module(x.requires_grad_(True)), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), quantized.kernels("float"):
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="Unknown kernels 'torch'"):
        with quantized.kernels("torch"):
            pass


@needs_llamacpp
def test_llamacpp_kernels_keep_the_tiny_models_predictions(
    tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    kept = mechlab.load_model(str(tiny_file), weights="quantized")
    tokens = kept.model.to_tokens("The Eiffel Tower is located in the city of")
    with torch.no_grad():
        native = kept.model(tokens).log_softmax(-1)
        with quantized.kernels("float"):
            exact = kept.model(tokens).log_softmax(-1)
    kl = float((exact.exp() * (exact - native)).sum(-1).mean())
    assert 0 < kl < 1e-3


def test_converting_checks_the_disk_first(
    tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(InputError, match=r"Writing the float32 copy of tiny-llama-q8\.gguf needs 0\.06 GB"):
        mechlab.load_model(str(tiny_file))
    assert not any((tmp_path / "cache").rglob("*.safetensors"))
    # Quantized mode writes the config and tokenizer only (kilobytes): no float32 copy to make room for.
    assert mechlab.load_model(str(tiny_file), weights="quantized").info.weights == "quantized"


@needs_llamacpp
def test_cached_decoding_allows_for_llamacpp_kernels_only(
    tiny_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mechlab.models import kv_cache
    from mechlab.models.decoding import decode

    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    kept = mechlab.load_model(str(tiny_file), weights="quantized").model
    floats = mechlab.load_model(str(tiny_file)).model
    assert kv_cache.tolerance(kept) == kv_cache.NATIVE_TOLERANCE
    assert kv_cache.tolerance(floats) == kv_cache.TOLERANCE
    with quantized.kernels("float"):
        assert kv_cache.tolerance(kept) == kv_cache.TOLERANCE
    tokens = kept.to_tokens("The Eiffel Tower is located in the city of")
    assert decode(kept, tokens, max_new_tokens=4).cached  # the cache passed its check
