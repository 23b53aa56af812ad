"""Quantized mode: a GGUF file's weight matrices stay in their blocks and are dequantized as they are used.

``load_model(path, weights="quantized")`` builds the transformers model with its parameters on the
meta device (``accelerate.init_empty_weights``), then replaces each linear layer and the token
embedding by a module holding the file's quantized blocks as a ``uint8`` tensor — a view of the
memory-mapped file on CPU, nothing copied — and loads the small float tensors (norms, biases) as
parameters. A quantized linear dequantizes its matrix ``CHUNK_ELEMENTS`` weights at a time, multiplies
and drops the chunk, so at most one chunk of dequantized weights exists at any moment; its backward
pass dequantizes again instead of keeping the forward's copy, so gradients with respect to the
activations (Integrated Gradients, attribution patching) cost no dequantized model either. An
embedding dequantizes only the rows of the tokens it looks up.

Products run on llama.cpp's own kernel where they can (``kernels``; ``mechlab.models.ggml_matmul``:
CPU, llama-cpp-python installed, no gradient through the product), else in float on dequantized
chunks. Dequantization is llama.cpp's reference one on CPU (``ggml_get_rows``) and diffusers' torch
port of the block formats elsewhere (``diffusers.quantizers.gguf.utils``; the same code runs on CUDA):
both equal gguf-py's dequantization bit for bit (tested). transformers' own GGUF loader dequantizes
every tensor at load time, and diffusers' ``GGUFLinear`` keeps the dequantized matrix for the backward
pass, so neither serves as the module itself.

The llama.cpp Q/K row permutation that transformers undoes after dequantizing is a permutation of whole
rows, and a row's blocks are self-contained: it is applied to the quantized rows (transformers' own
tensor processor, on the raw bytes), which is why the mode is limited to architectures whose processor
does nothing else to a matrix (``ARCHITECTURES``).
"""

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor, nn

from mechlab.errors import (
    MSG_QUANTIZED_ARCH,
    MSG_QUANTIZED_NEEDS_DIFFUSERS,
    CorruptModelError,
    InputError,
    UnsupportedArchitectureError,
)

# GGUF architectures whose transformers tensor processor changes a matrix only by permuting its rows.
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")
# Dequantized weights per chunk of rows (64 MB in float32).
CHUNK_ELEMENTS = 1 << 24
# While set, ``weight`` gives a meta tensor of the matrix's shape instead of dequantizing it.
_SHAPES_ONLY = False
# How a quantized matrix multiplies: "llama.cpp" (its CPU kernel, 8-bit activations, where
# llama-cpp-python is installed and the matrix is on CPU; "float" otherwise) or "float" (the matrix
# dequantized in chunks, then a float product).
KERNELS = ("llama.cpp", "float")
_KERNELS = "llama.cpp"
_FLOAT_VIEWS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _block_format(qtype: Any) -> tuple[int, int, Callable[..., Tensor] | None]:
    """``(weights per block, bytes per block, dequantizer)``; the dequantizer is ``None`` for floats."""
    import gguf

    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype.name in _FLOAT_VIEWS:
        return block_size, type_size, None
    return block_size, type_size, _dequantizers().get(qtype)


def _dequantizers() -> dict[Any, Callable[..., Tensor]]:
    try:
        from diffusers.quantizers.gguf.utils import dequantize_functions
    except ImportError as error:
        raise InputError(MSG_QUANTIZED_NEEDS_DIFFUSERS.format(error=error)) from error
    return dict(dequantize_functions)


def kept_types() -> list[str]:
    """The GGUF storage types a quantized-mode matrix keeps as they are."""
    return sorted({t.name for t in _dequantizers()} | set(_FLOAT_VIEWS))


def dequantize(
    blocks: UInt8[Tensor, "rows row_bytes"], qtype: Any, columns: int, dtype: torch.dtype
) -> Float[Tensor, "rows columns"]:
    """Rows of a GGUF tensor (``qtype``: a ``gguf.GGMLQuantizationType``) as floats in ``dtype``."""
    block_size, type_size, function = _block_format(qtype)
    rows = blocks.shape[0]
    if function is None:
        return blocks.view(_FLOAT_VIEWS[qtype.name]).reshape(rows, columns).to(dtype)
    flat = blocks.reshape(-1, type_size)
    return function(flat, block_size, type_size, dtype=torch.float32).reshape(rows, columns).to(dtype)


class QuantizedMatrix(nn.Module):
    """A ``[rows, columns]`` matrix kept in GGUF blocks (a non-persistent ``uint8`` buffer).

    ``chunks(dtype)`` yields ``(start, stop, rows)`` with at most ``CHUNK_ELEMENTS`` weights
    dequantized at a time; ``weight`` dequantizes the whole matrix (for code that reads it, e.g.
    ``model.W_U``: it allocates the float matrix each time it is read).
    """

    blocks: Tensor

    def __init__(self, blocks: UInt8[Tensor, "rows row_bytes"], qtype: Any, columns: int) -> None:
        super().__init__()
        self.register_buffer("blocks", blocks, persistent=False)
        self.qtype = qtype
        self.columns = columns

    @property
    def rows(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def ggml_type(self) -> int:
        return int(self.qtype)

    def native(self) -> bool:
        """Whether products with this matrix run on llama.cpp's kernel (see ``kernels``)."""
        return _KERNELS == "llama.cpp" and self.qtype.name not in _FLOAT_VIEWS and _ggml_usable(self.blocks)

    @property
    def storage(self) -> str:
        return str(self.qtype.name)

    def chunks(self, dtype: torch.dtype) -> Any:
        step = max(1, CHUNK_ELEMENTS // self.columns)
        for start in range(0, self.rows, step):
            stop = min(start + step, self.rows)
            yield start, stop, self._dequantized(torch.arange(start, stop, device=self.blocks.device), dtype)

    def rows_of(self, index: Int[Tensor, " n"], dtype: torch.dtype) -> Float[Tensor, "n columns"]:
        """Rows ``index``, dequantized: by llama.cpp on CPU where it is installed (its reference
        dequantization, equal to the torch one bit for bit, several times faster), else by torch.

        Raises:
            IndexError: an index outside the matrix (checked here: llama.cpp would abort the process).
        """
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.rows):
            raise IndexError(f"row index out of range: the matrix has {self.rows} rows")
        return self._dequantized(index, dtype)

    def _dequantized(self, index: Int[Tensor, " n"], dtype: torch.dtype) -> Float[Tensor, "n columns"]:
        if self.qtype.name not in _FLOAT_VIEWS and _ggml_usable(self.blocks):
            from mechlab.models import ggml_matmul

            return ggml_matmul.dequantize_rows(self.blocks, self.ggml_type, self.columns, index).to(dtype)
        return dequantize(self.blocks[index], self.qtype, self.columns, dtype)

    @property
    def weight(self) -> Float[Tensor, "rows columns"]:
        if _SHAPES_ONLY:  # the bridge reads every attribute while it is built
            return torch.empty(self.rows, self.columns, device="meta")
        return self._dequantized(torch.arange(self.rows, device=self.blocks.device), torch.float32)

    def extra_repr(self) -> str:
        return f"{self.rows}×{self.columns}, {self.storage}"


def native_products(model: Any) -> bool:
    """Whether any of ``model``'s products runs on llama.cpp's kernels now (see ``kernels``)."""
    modules = model.modules() if isinstance(model, nn.Module) else ()
    return any(isinstance(module, QuantizedMatrix) and module.native() for module in modules)


def _ggml_usable(blocks: Tensor) -> bool:
    from mechlab.models import ggml_matmul

    return ggml_matmul.usable(blocks)


class _QuantizedMatmul(torch.autograd.Function):
    """``x @ W.T`` for a quantized ``W``: llama.cpp's kernel (``native``), or the matrix dequantized
    chunk by chunk. The backward pass dequantizes again instead of keeping the forward's copy."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, matrix: QuantizedMatrix, native: bool) -> Tensor:  # type: ignore[override]
        ctx.matrix = matrix
        if native:
            from mechlab.models import ggml_matmul

            flat = ggml_matmul.matmul(
                x.reshape(-1, matrix.columns), matrix.blocks, matrix.ggml_type, matrix.rows
            )
            return flat.to(x.dtype).reshape(*x.shape[:-1], matrix.rows)
        out = x.new_empty(*x.shape[:-1], matrix.rows)
        for start, stop, rows in matrix.chunks(x.dtype):
            out[..., start:stop] = x @ rows.T
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None
        matrix: QuantizedMatrix = ctx.matrix
        grad_x: Tensor | None = None
        for start, stop, rows in matrix.chunks(grad.dtype):
            part = grad[..., start:stop] @ rows
            grad_x = part if grad_x is None else grad_x + part
        return grad_x, None, None


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with its weight kept quantized (``matrix``); the bias, if any, is a float parameter."""

    def __init__(self, matrix: QuantizedMatrix, bias: Tensor | None = None) -> None:
        super().__init__()
        self.matrix = matrix
        self.in_features = matrix.columns
        self.out_features = matrix.rows
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @property
    def weight(self) -> Float[Tensor, "d_out d_in"]:
        return self.matrix.weight

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        # A pass that differentiates through this product computes it in float: exact gradients.
        native = self.matrix.native() and not (torch.is_grad_enabled() and x.requires_grad)
        out = _QuantizedMatmul.apply(x, self.matrix, native)
        return out if self.bias is None else out + self.bias


class QuantizedEmbedding(nn.Module):
    """``nn.Embedding`` with its table kept quantized: a lookup dequantizes the rows it reads.

    ``scale`` multiplies the rows (Gemma's embedding scale, taken from the module it replaces); its
    dtype, which follows the model's, is the dtype of the rows.
    """

    embed_scale: Tensor

    def __init__(self, matrix: QuantizedMatrix, scale: Tensor | None = None) -> None:
        super().__init__()
        self.matrix = matrix
        self.num_embeddings = matrix.rows
        self.embedding_dim = matrix.columns
        self.register_buffer("embed_scale", torch.tensor(1.0) if scale is None else scale, persistent=False)

    @property
    def weight(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.matrix.weight

    def forward(self, ids: Int[Tensor, "*shape"]) -> Float[Tensor, "*shape d_model"]:
        rows = self.matrix.rows_of(ids.reshape(-1), self.embed_scale.dtype)
        return rows.reshape(*ids.shape, self.embedding_dim) * self.embed_scale


def check_architecture(architecture: str, path: Path) -> None:
    """Raise ``UnsupportedArchitectureError`` unless quantized mode can load this architecture."""
    if architecture not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            MSG_QUANTIZED_ARCH.format(path=path, arch=architecture, supported=", ".join(ARCHITECTURES))
        )


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, module)


def build(path: Path, config: Any, architecture: str) -> nn.Module:
    """The transformers causal LM of ``config`` with ``path``'s weights, matrices kept quantized.

    Raises:
        UnsupportedArchitectureError: an architecture outside ``ARCHITECTURES``.
        CorruptModelError: a tensor the model needs is missing, or has the wrong size.
    """
    import gguf
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    check_architecture(architecture, path)
    _dequantizers()  # before anything is built: a missing extra is said first
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    names = tensor_names(model, architecture, config.num_hidden_layers)
    for tensor, data in _tensors(path):
        hf_name = names.get(tensor.name)
        if hf_name is None:  # e.g. rope_freqs.weight: transformers computes it from the config
            continue
        qtype = gguf.GGMLQuantizationType(tensor.ggml_type)
        owner_name, _, leaf = hf_name.rpartition(".")
        owner = model.get_submodule(owner_name)
        keep = (
            leaf == "weight"
            and isinstance(owner, nn.Linear | nn.Embedding)
            and len(tensor.shape) == 2
            and (qtype.name in _FLOAT_VIEWS or _block_format(qtype)[2] is not None)
        )
        if keep:
            raw = processor.process(weights=data, name=tensor.name).weights  # Q/K rows permuted
            blocks = torch.from_numpy(raw)
            if raw is not data:  # a permuted copy: into torch's (aligned) memory
                blocks = blocks.clone()
            matrix = QuantizedMatrix(blocks, qtype, tensor.shape[0])
            _check_shape(path, tensor.name, (matrix.rows, matrix.columns), tuple(owner.weight.shape))
            _set(model, owner_name, _quantized_module(owner, matrix))
        else:
            values = gguf.quants.dequantize(data, qtype).reshape(tuple(reversed(tensor.shape)))
            values = processor.process(weights=values, name=tensor.name).weights
            target = getattr(owner, leaf)
            values = values.reshape(target.shape) if values.size == target.numel() else values
            _check_shape(path, tensor.name, tuple(values.shape), tuple(target.shape))
            setattr(owner, leaf, nn.Parameter(torch.from_numpy(np.array(values, dtype=np.float32))))
    _tie(model)
    missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if missing:
        raise CorruptModelError(
            f"{path} has no tensor for {len(missing)} weight(s) the {architecture} model needs "
            f"({', '.join(missing[:4])}{'…' if len(missing) > 4 else ''}). The file is incomplete or "
            "not a standard llama.cpp conversion; re-download or re-convert it."
        )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def _tensors(path: Path) -> Any:
    """``(tensor info, its data as uint8 rows [rows, bytes per row])`` for each tensor of a GGUF file:
    views of a copy-on-write map of the file (writable, nothing read until used)."""
    import gguf

    from mechlab.models import gguf_scan

    header = gguf_scan.read(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="c")
    start = header.data_start
    for tensor in header.tensors:
        block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tensor.ggml_type)]
        row_bytes = tensor.shape[0] // block_size * type_size
        rows = tensor.n_elements // tensor.shape[0]
        begin = start + tensor.offset
        if begin + rows * row_bytes > mapped.size:
            raise CorruptModelError(
                f"{path}: tensor {tensor.name} ends past the end of the file; the file is truncated. "
                "Re-download or re-convert it."
            )
        yield tensor, mapped[begin : begin + rows * row_bytes].reshape(rows, row_bytes)


def tensor_names(model: nn.Module, architecture: str, n_layers: int) -> dict[str, str]:
    """GGUF tensor name → the transformers parameter it loads into (``blk.0.attn_q.weight`` →
    ``model.layers.0.self_attn.q_proj.weight``), from gguf-py's name table as transformers uses it
    (``get_gguf_hf_weights_map``, which rebuilds the table for every sub-module: seconds)."""
    import gguf

    arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    table = gguf.get_tensor_name_map(arch, n_layers)
    names: dict[str, str] = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        found = table.get_name(base) if suffix in ("weight", "bias") else None
        if found is not None:
            names.setdefault(f"{found}.{suffix}", hf_name)
    return names


def _check_shape(path: Path, name: str, found: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if found != expected:
        raise CorruptModelError(
            f"{path}: tensor {name} is {found}, the model's config expects {expected}. The file's "
            "metadata and tensors disagree; re-download or re-convert it."
        )


def _quantized_module(original: Any, matrix: QuantizedMatrix) -> nn.Module:
    if isinstance(original, nn.Embedding):
        scale = getattr(original, "embed_scale", None)
        return QuantizedEmbedding(matrix, None if scale is None else scale.float())
    return QuantizedLinear(matrix, original.bias)  # a bias still on meta is loaded when its tensor comes


def _tie(model: Any) -> None:
    """Files of tied models have no output matrix: the LM head reads the embedding's blocks."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or not head.weight.is_meta:
        return
    embedding = model.get_input_embeddings()
    if isinstance(embedding, QuantizedEmbedding):
        _set(model, _name_of(model, head), QuantizedLinear(embedding.matrix))
    elif not embedding.weight.is_meta:
        head.weight = embedding.weight


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, sub in model.named_modules() if sub is module)


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the quantized blocks a model holds (what replaces its float weight matrices)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, QuantizedMatrix) and id(module.blocks) not in seen:
            seen.add(id(module.blocks))
            total += module.blocks.numel()
    return total


@contextlib.contextmanager
def shapes_only() -> Any:
    """Inside the block, reading a quantized module's ``weight`` costs nothing: it is a meta tensor of
    its shape. TransformerLens reads every attribute of every component while it builds a bridge."""
    global _SHAPES_ONLY
    kept, _SHAPES_ONLY = _SHAPES_ONLY, True
    try:
        yield
    finally:
        _SHAPES_ONLY = kept


@contextlib.contextmanager
def kernels(name: str) -> Any:
    """Inside the block, quantized products run on ``name``'s kernels (``KERNELS``).

    ``llama.cpp`` (the default) multiplies as llama.cpp does — 8-bit activations, integer dot
    products — in passes without gradients (a pass that differentiates through a product computes
    that product in float); ``float`` dequantizes the weights and multiplies in floating point
    everywhere, so every pass equals the float32 route's.

    Raises:
        InputError: an unknown kernel name.
    """
    global _KERNELS
    if name not in KERNELS:
        raise InputError(f"Unknown kernels {name!r}: expected one of {', '.join(KERNELS)}.")
    kept, _KERNELS = _KERNELS, name
    try:
        yield
    finally:
        _KERNELS = kept


def exact_gradients(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` with quantized products in float (``kernels("float")``): a method that compares
    gradients with the model's outputs (Integrated Gradients' completeness, attribution patching)
    must differentiate the very function whose values it reads, in its passes without gradients too."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with kernels("float"):
            return method(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def chunk_elements(elements: int) -> Any:
    """Dequantize at most ``elements`` weights at a time inside the block (for benchmarks and tests)."""
    global CHUNK_ELEMENTS
    kept, CHUNK_ELEMENTS = CHUNK_ELEMENTS, elements
    try:
        yield
    finally:
        CHUNK_ELEMENTS = kept
