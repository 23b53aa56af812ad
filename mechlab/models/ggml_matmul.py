"""llama.cpp's own quantized matrix product (ggml's CPU kernels), for quantized mode's forward passes.

Dequantizing a matrix with torch ops costs far more than multiplying by it (dozens of passes over the
weights against one), so on CPU, where llama-cpp-python is installed, a quantized linear layer's
forward pass without gradients runs ``ggml_mul_mat`` on the file's blocks in place — the kernel
llama.cpp runs, which quantizes the activations to 8 bits as llama.cpp does. Passes that need
gradients keep the torch route, whose backward pass differentiates exactly the function computed.

The shared libraries are the ones llama-cpp-python ships; the calls are ggml's public C API through
ctypes (``ggml_init``, ``ggml_new_tensor_2d``, ``ggml_mul_mat``, ``ggml_backend_tensor_alloc`` on
buffers wrapping torch's memory, ``ggml_backend_graph_compute``): nothing is copied.
"""

import ctypes
import functools
import importlib.util
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

# ggml asserts (and aborts the process) on a buffer not aligned to this many bytes.
ALIGNMENT = 32
_F32 = 0
_I32 = 26
_TENSORS_PER_CALL = 4


class _InitParams(ctypes.Structure):
    _fields_ = (("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool))


class _Ggml:
    """The ggml functions quantized mode calls, with their C signatures."""

    def __init__(self, directory: Path) -> None:
        mode = ctypes.RTLD_GLOBAL
        base = ctypes.CDLL(str(directory / "libggml-base.so"), mode=mode)
        cpu = ctypes.CDLL(str(directory / "libggml-cpu.so"), mode=mode)
        p, size, i64, i32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int
        self.init = _fn(base.ggml_init, p, _InitParams)
        self.free = _fn(base.ggml_free, None, p)
        self.tensor_overhead = _fn(base.ggml_tensor_overhead, size)
        self.graph_overhead = _fn(base.ggml_graph_overhead, size)
        self.new_tensor_1d = _fn(base.ggml_new_tensor_1d, p, p, i32, i64)
        self.new_tensor_2d = _fn(base.ggml_new_tensor_2d, p, p, i32, i64, i64)
        self.get_rows = _fn(base.ggml_get_rows, p, p, p, p)
        self.mul_mat = _fn(base.ggml_mul_mat, p, p, p, p)
        self.new_graph = _fn(base.ggml_new_graph, p, p)
        self.build_forward_expand = _fn(base.ggml_build_forward_expand, None, p, p)
        self.buffer_from_ptr = _fn(base.ggml_backend_cpu_buffer_from_ptr, p, p, size)
        self.buffer_free = _fn(base.ggml_backend_buffer_free, None, p)
        self.tensor_alloc = _fn(base.ggml_backend_tensor_alloc, i32, p, p, p)
        self.graph_compute = _fn(base.ggml_backend_graph_compute, i32, p, p)
        self.cpu_init = _fn(cpu.ggml_backend_cpu_init, p)
        self.set_n_threads = _fn(cpu.ggml_backend_cpu_set_n_threads, None, p, i32)
        self.backend = self.cpu_init()
        self.context_size = _TENSORS_PER_CALL * self.tensor_overhead() + self.graph_overhead() + 1024


def _fn(function: Any, restype: Any, *argtypes: Any) -> Any:
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


@functools.cache
def _library() -> _Ggml | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent / "lib"
    try:
        return _Ggml(directory)
    except (OSError, AttributeError):  # no shared libraries there, or a ggml without these functions
        return None


def available() -> bool:
    """Whether llama.cpp's kernels can be called (llama-cpp-python is installed with its libraries)."""
    return _library() is not None


def usable(blocks: Tensor) -> bool:
    """Whether ``blocks`` can be handed to ggml as they are: on CPU, contiguous and aligned."""
    return (
        blocks.device.type == "cpu"
        and blocks.is_contiguous()
        and blocks.data_ptr() % ALIGNMENT == 0
        and available()
    )


def matmul(
    x: Float[Tensor, "rows columns"], blocks: Tensor, ggml_type: int, out_features: int
) -> Float[Tensor, "rows out_features"]:
    """``x @ W.T`` with ``W`` the ``[out_features, columns]`` matrix stored in ``blocks`` (GGUF layout),
    activations rounded to 8 bits as llama.cpp does."""
    x = _aligned(x.float().contiguous())
    rows, columns = x.shape
    out = torch.empty(rows, out_features, dtype=torch.float32)

    def graph(ggml: _Ggml, ctx: int) -> tuple[list[tuple[int, Tensor]], int]:
        weight = ggml.new_tensor_2d(ctx, ggml_type, columns, out_features)
        activations = ggml.new_tensor_2d(ctx, _F32, columns, rows)
        product = ggml.mul_mat(ctx, weight, activations)
        return [(weight, blocks), (activations, x), (product, out)], product

    _compute(graph)
    return out


def dequantize_rows(
    blocks: Tensor, ggml_type: int, columns: int, index: Tensor
) -> Float[Tensor, "n columns"]:
    """Rows ``index`` of the matrix stored in ``blocks``, dequantized by llama.cpp (``ggml_get_rows``:
    its reference dequantization, equal to gguf-py's) into float32."""
    ids = _aligned(index.to(torch.int32).contiguous())
    out = torch.empty(len(ids), columns, dtype=torch.float32)

    def graph(ggml: _Ggml, ctx: int) -> tuple[list[tuple[int, Tensor]], int]:
        table = ggml.new_tensor_2d(ctx, ggml_type, columns, blocks.shape[0])
        rows = ggml.new_tensor_1d(ctx, _I32, len(ids))
        picked = ggml.get_rows(ctx, table, rows)
        return [(table, blocks), (rows, ids), (picked, out)], picked

    _compute(graph)
    return out


def _aligned(tensor: Tensor) -> Tensor:
    return tensor if tensor.data_ptr() % ALIGNMENT == 0 else tensor.clone()


def _compute(graph: Any) -> None:
    """Build one operation's graph in a fresh context (``graph(ggml, ctx)`` gives each tensor with the
    torch memory it reads or writes, and the result), run it on ggml's CPU backend, free it all."""
    ggml = _library()
    assert ggml is not None
    ctx = ggml.init(_InitParams(ggml.context_size, None, True))
    buffers: list[int] = []
    try:
        tensors, result = graph(ggml, ctx)
        for tensor, memory in tensors:
            buffer = ggml.buffer_from_ptr(memory.data_ptr(), memory.numel() * memory.element_size())
            buffers.append(buffer)
            if ggml.tensor_alloc(buffer, tensor, memory.data_ptr()) != 0:
                raise RuntimeError("ggml_backend_tensor_alloc failed")
        cgraph = ggml.new_graph(ctx)
        ggml.build_forward_expand(cgraph, result)
        ggml.set_n_threads(ggml.backend, torch.get_num_threads())
        if ggml.graph_compute(ggml.backend, cgraph) != 0:
            raise RuntimeError("ggml_backend_graph_compute failed")
    finally:
        for buffer in buffers:
            ggml.buffer_free(buffer)
        ggml.free(ctx)
