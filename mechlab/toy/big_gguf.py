"""Big random-weight GGUF files in real model shapes, for benchmarks and tests.

A Llama 3.1 8B Q4_K_M file is what an operator runs; testing that mechlab opens, plans and runs it
needs such a file, and a real one is gigabytes behind a licence. ``write_big_gguf`` writes one with the
real shape (``SHAPES``: Llama 3.2 1B and 3B, Llama 3.1 8B, and a tiny shape for tests) and seeded
random weights, laid out exactly as llama.cpp's ``convert_hf_to_gguf.py`` writes a Llama 3 checkpoint:
architecture ``llama``, the same tensor names, types and metadata keys, Llama 3's RoPE scaling as the
``rope_freqs.weight`` tensor of per-dimension divisors, a separate ``output.weight`` only where the
embeddings are untied (8B). The tokenizer is SmolLM2's (copied from the bundled SmolLM2 GGUF), padded
with unused ``[PAD<id>]`` tokens (what the converter writes for ids a vocabulary lacks) up to the
shape's 128,256 rows, so ``token_embd`` has the real size.

Weights: normal with std 0.02, the two projections that write to the residual stream (``attn_output``,
``ffn_down``) scaled by ``1/sqrt(2 * n_layers)`` (GPT-2's init), the blocks' norms 1.0 and the final
norm's gain set so that logits spread with std ``LOGIT_STD`` (2), as a trained model's do: activations
stay finite through every layer, and the softmax is not so flat that KL and agreement figures between
runtimes shrink to nothing. Each tensor draws from its own generator, seeded by ``(seed, tensor
index)``; Q/K rows are drawn in llama.cpp's layout directly (permuting i.i.d. rows changes nothing).

Nothing holds the whole model: gguf-py's writer gets every tensor's name, shape and type first
(``add_tensor_info``), writes header, metadata and tensor table, and then each tensor's data is drawn,
cast (F16) or quantized (Q8_0, gguf-py's numpy quantizer) and written a block of rows at a time (at most
``CHUNK_VALUES`` values, encoded in threads while the next block is drawn): a few hundred MB whatever
the shape. K-quants (Q4_K_M…) come from llama.cpp's quantizer, re-quantizing a Q8_0 intermediate (8.5
bits a weight, not a 16-bit F16 copy) that is deleted afterwards. The quantizer dequantizes each tensor
whole into a float32 buffer, 2.1 GB for 8B's embedding matrix, so the intermediate holds the two
vocabulary matrices already in their final types (``EMBEDDING_TYPES``, quantized with ggml's own
``ggml_quantize_chunk``), which the quantizer copies. Files are written beside their final path and
renamed into place.

``big_gguf(shape, qtype)`` keeps one file per (shape, type, seed, generator version) in mechlab's cache
(``<cache>/big-gguf/``) and reuses it. From the shell:

    python -m mechlab.toy.big_gguf llama-3.1-8b --type Q4_K_M            # into the cache
    python -m mechlab.toy.big_gguf llama-3.2-1b --type Q8_0 --out 1b.gguf

    >>> SHAPES["llama-3.1-8b"].n_params, SHAPES["llama-3.2-1b"].d_head  # rope_freqs: 64 of them
    (8030261312, 64)
"""

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import io
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from mechlab.errors import InputError
from mechlab.files import atomic_dir_sibling, check_target
from mechlab.progress import Progress

# Bumped whenever the bytes a (shape, type, seed) writes change: cached files of an older version are
# written again.
GENERATOR_VERSION = 4
INIT_STD = 0.02
# The logits' spread (see BigShape.tensors). KL between two runtimes grows with its square: at 2,
# llama.cpp's own 8-bit activations leave mean KL 0.0055 against mechlab's float32 route on the 1B
# Q4_K_M (at 3: 0.012), as on SmolLM2 Q4_1; at 0.9 (the final norm at 1) a bug's KL shrinks fivefold.
LOGIT_STD = 2.0
# Values drawn, cast or quantized at once (64 MiB of float32): bounds the generator's memory.
CHUNK_VALUES = 1 << 24
NATIVE_TYPES = ("F16", "Q8_0")  # written by gguf-py; any other type goes through llama.cpp
# The types llama.cpp's quantizer (llama_tensor_get_type, no importance matrix, widths a multiple of 256)
# gives the two vocabulary matrices for a file type: token_embd where a separate output.weight exists,
# and the output projection (token_embd where tied). The Q8_0 intermediate holds them in these types
# already, quantized by ggml itself, so the quantizer copies them instead of dequantizing each into a
# float32 buffer (2.1 GB apiece for Llama 3.1 8B's 128,256 x 4,096).
EMBEDDING_TYPES = {"Q4_K_M": ("Q4_K", "Q6_K"), "Q5_K_M": ("Q5_K", "Q6_K"), "Q6_K": ("Q6_K", "Q6_K")}
# llama.cpp's file-type ids (general.file_type) of the types gguf-py writes.
_FILE_TYPE = {"F16": 1, "Q8_0": 7}
# Upper bounds of the bits a weight takes, for the disk-space check: every quantized type up to Q6_K
# (6.5625 bits) and Q8_0 (8.5 bits); float types by their width.
_BITS_BOUND = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5}
_SMALL_BITS_BOUND = 6.5625
TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
)
_UNUSED_TOKEN = 5  # gguf.TokenType.UNUSED: the converter's type for ids the vocabulary lacks


@dataclasses.dataclass(frozen=True)
class Llama3Rope:
    """Llama 3's RoPE scaling (transformers' ``rope_type="llama3"``), which llama.cpp's converter
    writes as per-dimension divisors in the ``rope_freqs.weight`` tensor."""

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192

    def divisors(self, d_head: int, theta: float) -> np.ndarray:
        """The ``rope_freqs.weight`` values, ``[d_head / 2]``, computed as ``convert_hf_to_gguf`` does."""
        freqs = 1.0 / (theta ** (np.arange(0, d_head, 2, dtype=np.float32) / d_head))
        low_wavelen = self.original_context / self.low_freq_factor
        high_wavelen = self.original_context / self.high_freq_factor
        out = []
        for freq in freqs:
            wavelen = 2 * math.pi / float(freq)
            if wavelen < high_wavelen:
                out.append(1.0)
            elif wavelen > low_wavelen:
                out.append(self.factor)
            else:
                smooth = (self.original_context / wavelen - self.low_freq_factor) / (
                    self.high_freq_factor - self.low_freq_factor
                )
                out.append(1 / ((1 - smooth) / self.factor + smooth))
        return np.array(out, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class BigShape:
    """A Llama-architecture model shape (llama.cpp's hyper-parameter names in the comments).

    ``head_dim_key``: whether the checkpoint's config names ``head_dim`` (Llama 3.2's do, 3.1's does
    not), in which case the converter also writes ``llama.attention.key_length``/``value_length``.
    """

    name: str
    n_layers: int  # block_count
    d_model: int  # embedding_length
    n_heads: int  # attention.head_count
    n_kv_heads: int  # attention.head_count_kv
    d_mlp: int  # feed_forward_length
    d_vocab: int = 128256
    n_ctx: int = 131072  # context_length
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5
    tied: bool = True  # no output.weight: the output projection is token_embd
    rope_scaling: Llama3Rope | None = None
    head_dim_key: bool = False

    def __post_init__(self) -> None:
        sizes = {f: getattr(self, f) for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_mlp")}
        bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
        if bad or self.d_vocab < 8:
            raise ValueError(f"Shape {self.name!r}: sizes must be positive (d_vocab >= 8); got {bad}.")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"Shape {self.name!r}: d_model {self.d_model} must split into {self.n_heads} heads of an "
                "even width (RoPE rotates pairs)."
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"Shape {self.name!r}: n_heads {self.n_heads} must be a multiple of n_kv_heads "
                f"{self.n_kv_heads} (grouped-query attention)."
            )
        if self.d_model % 32 or self.d_mlp % 32:
            raise ValueError(
                f"Shape {self.name!r}: d_model and d_mlp must be multiples of 32 (Q8_0 blocks); got "
                f"{self.d_model} and {self.d_mlp}."
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def tensors(self) -> list["TensorSpec"]:
        """Every tensor of the file, in the order written: name, numpy shape ``(rows, cols)``, init."""
        d, kv = self.d_model, self.n_kv_heads * self.d_head
        out_std = INIT_STD / math.sqrt(2 * self.n_layers)
        specs = [TensorSpec("token_embd.weight", (self.d_vocab, d), INIT_STD)]
        if self.rope_scaling is not None:
            specs.append(TensorSpec("rope_freqs.weight", (self.d_head // 2,), 0.0))
        for layer in range(self.n_layers):
            for name, shape, std in (
                ("attn_norm", (d,), 0.0),
                ("attn_q", (d, d), INIT_STD),
                ("attn_k", (kv, d), INIT_STD),
                ("attn_v", (kv, d), INIT_STD),
                ("attn_output", (d, d), out_std),
                ("ffn_norm", (d,), 0.0),
                ("ffn_gate", (self.d_mlp, d), INIT_STD),
                ("ffn_up", (self.d_mlp, d), INIT_STD),
                ("ffn_down", (d, self.d_mlp), out_std),
            ):
                specs.append(TensorSpec(f"blk.{layer}.{name}.weight", shape, std))
        # Logits spread like a trained model's (std LOGIT_STD), not 0.02 * sqrt(d_model) (0.9 for 1B):
        # the final norm's gain scales them, so runtimes' KL figures are not shrunk by a flat softmax.
        gain = LOGIT_STD / (INIT_STD * math.sqrt(d))
        specs.append(TensorSpec("output_norm.weight", (d,), 0.0, fill=gain))
        if not self.tied:
            specs.append(TensorSpec("output.weight", (self.d_vocab, d), INIT_STD))
        return specs

    @property
    def n_params(self) -> int:
        """Parameters stored in the file (``rope_freqs`` included)."""
        return sum(spec.size for spec in self.tensors())


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor: GGUF name, numpy shape (GGUF lists it reversed), and its init: normal with ``std``,
    or ``fill`` everywhere where ``std`` is 0."""

    name: str
    shape: tuple[int, ...]
    std: float
    fill: float = 1.0

    @property
    def size(self) -> int:
        return math.prod(self.shape)


_LLAMA_3_2 = Llama3Rope(factor=32.0)
SHAPES: dict[str, BigShape] = {
    shape.name: shape
    for shape in (
        BigShape("llama-3.2-1b", 16, 2048, 32, 8, 8192, rope_scaling=_LLAMA_3_2, head_dim_key=True),
        BigShape("llama-3.2-3b", 28, 3072, 24, 8, 8192, rope_scaling=_LLAMA_3_2, head_dim_key=True),
        BigShape("llama-3.1-8b", 32, 4096, 32, 8, 14336, tied=False, rope_scaling=Llama3Rope(factor=8.0)),
        # Seconds to write and load: every matrix width a multiple of 256 (K-quant blocks), the first
        # 2,048 SmolLM2 tokens (transformers' tokenizer conversion takes seconds per 10k tokens).
        BigShape(
            "tiny", 2, 256, 4, 2, 512, d_vocab=2048, n_ctx=2048, rope_scaling=_LLAMA_3_2, head_dim_key=True
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class BigGGUFProgress:
    """Where ``write_big_gguf`` is: ``stage`` ("writing F16", "writing the Q8_0 intermediate",
    "quantizing to Q4_K_M"…) is ``done`` of ``total`` bytes (of the file that stage writes)."""

    stage: str
    done: int
    total: int | None


def shape_named(shape: "str | BigShape") -> BigShape:
    """``shape`` itself, or the entry of ``SHAPES`` it names.

    Raises:
        InputError: no shape has that name.
    """
    if isinstance(shape, BigShape):
        return shape
    if shape not in SHAPES:
        raise InputError(f"{shape!r} is no big-GGUF shape; choose one of {', '.join(SHAPES)}.")
    return SHAPES[shape]


def tensor_types(shape: BigShape, qtype: str) -> dict[str, str]:
    """The ggml type each tensor is written in by gguf-py (names such as ``"Q8_0"``): 1-D tensors F32
    and matrices ``qtype``, as the converter writes them; for a llama.cpp type, the Q8_0 intermediate,
    with the vocabulary matrices in their final type (``EMBEDDING_TYPES``)."""
    matrix = qtype if qtype in NATIVE_TYPES else "Q8_0"
    embed, output = EMBEDDING_TYPES.get(qtype, (matrix, matrix))
    if shape.d_model % 256:  # llama.cpp falls back to other types for widths K-quants do not divide
        embed = output = matrix
    special = {"token_embd.weight": output if shape.tied else embed, "output.weight": output}
    return {
        spec.name: "F32" if len(spec.shape) == 1 else special.get(spec.name, matrix)
        for spec in shape.tensors()
    }


def tensor_nbytes(spec: TensorSpec, ggml_type: str) -> int:
    """Bytes ``spec`` takes as ``ggml_type`` (``"F32"``, ``"F16"``, ``"Q8_0"``, ``"Q4_K"``…)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]]
    return spec.size // spec.shape[-1] * (spec.shape[-1] // block) * size


def estimated_size(shape: "str | BigShape", qtype: str) -> int:
    """Bytes of a ``qtype`` file of ``shape``: the tensors' exact size for F16 and Q8_0, an upper bound
    for llama.cpp's types; plus 16 MiB for the metadata."""
    shape = shape_named(shape)
    qtype = qtype.upper()
    if qtype in NATIVE_TYPES:
        types = tensor_types(shape, qtype)
        body = sum(tensor_nbytes(spec, types[spec.name]) for spec in shape.tensors())
    else:
        bits = _BITS_BOUND.get(qtype, _SMALL_BITS_BOUND)
        body = math.ceil(shape.n_params * bits / 8)
    return body + 16 * 1024**2


def disk_needed(shape: "str | BigShape", qtype: str) -> int:
    """Bytes ``write_big_gguf`` needs free: the file's (a bound for llama.cpp's types) and, for those,
    the intermediate's, which exists until the quantizer is done."""
    shape = shape_named(shape)
    qtype = qtype.upper()
    if qtype in NATIVE_TYPES:
        return estimated_size(shape, qtype)
    types = tensor_types(shape, qtype)
    intermediate = sum(tensor_nbytes(spec, types[spec.name]) for spec in shape.tensors())
    return estimated_size(shape, qtype) + intermediate + 16 * 1024**2


def copy_tokenizer(writer: Any, source: Path, vocab_size: int, *, chat_template: bool = False) -> None:
    """Write ``source``'s BPE tokenizer into ``writer`` with exactly ``vocab_size`` tokens.

    A smaller ``vocab_size`` keeps the first tokens and the merges among them (transformers converts
    a GGUF vocabulary at seconds per 10k tokens, so tests use a slice); a larger one appends unused
    ``[PAD<id>]`` tokens, as llama.cpp's converter does for ids a checkpoint's vocabulary lacks.
    """
    fields = _tokenizer_fields(Path(source))
    tokens = list(fields["tokenizer.ggml.tokens"][:vocab_size])
    types = list(fields["tokenizer.ggml.token_type"][:vocab_size])
    known = set(tokens)
    merges = [m for m in fields["tokenizer.ggml.merges"] if _merge_within(m, known)]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types += [_UNUSED_TOKEN] * (vocab_size - len(types))
    writer.add_tokenizer_model(fields["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(fields["tokenizer.ggml.pre"])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    if chat_template and fields.get("tokenizer.chat_template"):
        writer.add_chat_template(fields["tokenizer.chat_template"])


@functools.lru_cache(maxsize=4)
def _tokenizer_fields(source: Path) -> dict[str, Any]:
    """``source``'s tokenizer metadata (reading SmolLM2's 49,152 tokens takes over a second)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    fields: dict[str, Any] = {key: tuple(reader.fields[key].contents()) for key in TOKENIZER_KEYS[2:]}
    for key in (*TOKENIZER_KEYS[:2], "tokenizer.chat_template"):
        fields[key] = reader.fields[key].contents() if key in reader.fields else None
    return fields


def _merge_within(merge: str, known: set[str]) -> bool:
    left, _, right = merge.partition(" ")
    return left in known and right in known and left + right in known


def _add_metadata(writer: Any, shape: BigShape, qtype: str, tokenizer_source: Path) -> None:
    """The keys ``convert_hf_to_gguf.py`` writes for a Llama 3 checkpoint, in its order."""
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"Random {shape.name}")
    writer.add_size_label(gguf.size_label(shape.n_params, shape.n_params, 0, 0))
    writer.add_block_count(shape.n_layers)
    writer.add_context_length(shape.n_ctx)
    writer.add_embedding_length(shape.d_model)
    writer.add_feed_forward_length(shape.d_mlp)
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    if shape.head_dim_key:
        writer.add_key_length(shape.d_head)
        writer.add_value_length(shape.d_head)
    writer.add_file_type(_FILE_TYPE[qtype])
    writer.add_vocab_size(shape.d_vocab)
    writer.add_rope_dimension_count(shape.d_head)
    copy_tokenizer(writer, tokenizer_source, shape.d_vocab, chat_template=True)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _chunks(spec: TensorSpec, index: int, seed: int, shape: BigShape) -> Iterator[np.ndarray]:
    """``spec``'s float32 values, a block of whole rows at a time (at most ``CHUNK_VALUES``)."""
    if spec.name == "rope_freqs.weight":
        assert shape.rope_scaling is not None
        yield shape.rope_scaling.divisors(shape.d_head, shape.rope_theta)
        return
    if spec.std == 0.0:
        yield np.full(spec.shape, spec.fill, dtype=np.float32)
        return
    rng = np.random.default_rng([seed, index])
    rows, cols = spec.shape
    step = max(1, CHUNK_VALUES // cols)
    for start in range(0, rows, step):
        block = rng.standard_normal((min(step, rows - start), cols), dtype=np.float32)
        block *= np.float32(spec.std)
        yield block


def _encode(values: np.ndarray, ggml_type: str) -> np.ndarray:
    """``values`` (float32, whole rows) as ``ggml_type``'s bytes: numpy for F32/F16, gguf-py's
    quantizer for Q8_0, ggml's (``ggml_quantize_chunk``, what llama.cpp's quantizer calls) otherwise."""
    import gguf

    if ggml_type == "F32":
        return values
    if ggml_type == "F16":
        return values.astype(np.float16)
    kind = gguf.GGMLQuantizationType[ggml_type]
    if kind == gguf.GGMLQuantizationType.Q8_0:
        return gguf.quants.quantize(values, kind)
    rows, cols = values.shape
    block, size = gguf.GGML_QUANT_SIZES[kind]
    out = np.empty((rows, cols // block * size), dtype=np.uint8)
    values = np.ascontiguousarray(values, dtype=np.float32)
    _ggml_quantize_chunk()(int(kind), values.ctypes.data, out.ctypes.data, 0, rows, cols, None)
    return out


@functools.cache
def _ggml_quantize_chunk() -> Any:
    """ggml's ``ggml_quantize_chunk`` from the library llama-cpp-python ships."""
    import ctypes

    from mechlab.models.references import llamacpp

    llama_cpp = llamacpp.available()
    if llama_cpp is None:
        raise InputError(llamacpp.INSTALL)
    found = sorted(Path(llama_cpp.__file__).parent.glob("lib/*ggml-base*"))
    if not found:
        raise InputError("llama-cpp-python ships no ggml library (lib/*ggml-base*); reinstall it.")
    function = ctypes.CDLL(str(found[0])).ggml_quantize_chunk
    function.restype = ctypes.c_size_t
    int64, pointer = ctypes.c_int64, ctypes.c_void_p
    function.argtypes = [ctypes.c_int, pointer, pointer, int64, int64, int64, pointer]
    return function


def _encoded(chunks: Iterator[np.ndarray], ggml_type: str, workers: int) -> Iterator[np.ndarray]:
    """``_encode`` of each chunk, in order, ``workers`` at a time in threads (numpy and ggml release
    the GIL) while this thread draws the next chunk; at most ``workers + 1`` chunks are held."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[concurrent.futures.Future[np.ndarray]] = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(_encode, chunk, ggml_type))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_tensors(
    shape: BigShape,
    path: Path,
    qtype: str,
    seed: int,
    tokenizer_source: Path,
    progress: Progress | None,
    workers: int,
) -> None:
    """Write ``shape`` at ``path`` in ``tensor_types(shape, qtype)``, tensor by tensor, a chunk at a
    time; ``qtype`` names the file type (``general.file_type``; Q8_0 for a llama.cpp intermediate)."""
    import gguf

    specs = shape.tensors()
    types = tensor_types(shape, qtype)
    writer = gguf.GGUFWriter(str(path), "llama")
    _add_metadata(writer, shape, qtype if qtype in NATIVE_TYPES else "Q8_0", tokenizer_source)
    for spec in specs:
        kind = gguf.GGMLQuantizationType[types[spec.name]]
        # A non-uint8 dtype keeps the shape as given (gguf-py converts uint8 byte shapes).
        writer.add_tensor_info(
            spec.name, spec.shape, np.dtype(np.float32), tensor_nbytes(spec, types[spec.name]), raw_dtype=kind
        )
    total = sum(tensor_nbytes(spec, types[spec.name]) for spec in specs)
    stage = f"writing {qtype}" if qtype in NATIVE_TYPES else "writing the Q8_0 intermediate"
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None and len(writer.fout) == 1
        out = writer.fout[0]
        done = 0
        for index, spec in enumerate(specs):
            # Tensor data starts aligned, and each tensor is padded to the alignment (the offsets the
            # tensor table holds assume it).
            writer.write_padding(out, out.tell())
            written = 0
            for encoded in _encoded(_chunks(spec, index, seed, shape), types[spec.name], workers):
                encoded.tofile(out)
                written += encoded.nbytes
                done += encoded.nbytes
                if progress is not None:
                    progress(BigGGUFProgress(stage, done, total))
            if written != tensor_nbytes(spec, types[spec.name]):
                raise AssertionError(f"{spec.name}: wrote {written} bytes, the tensor table says otherwise")
            writer.write_padding(out, written)
    finally:
        writer.close()


def write_big_gguf(
    shape: "str | BigShape",
    path: Path,
    qtype: str = "Q4_K_M",
    seed: int = 0,
    *,
    progress: Progress | None = None,
    tokenizer_source: Path | None = None,
    threads: int | None = None,
) -> Path:
    """Write a random-weight GGUF of ``shape`` (a name in ``SHAPES`` or a ``BigShape``) at ``path``.

    Args:
        shape: the model shape.
        path: the file to write (replaced once the new one is complete).
        qtype: ``"F16"`` or ``"Q8_0"`` (written by gguf-py), or a llama.cpp file type such as
            ``"Q4_K_M"`` (llama.cpp re-quantizes a Q8_0 intermediate; needs llama-cpp-python).
        seed: the weights' seed; a seed and shape give the same bytes every time.
        progress: called with a ``BigGGUFProgress`` as the file grows.
        tokenizer_source: the GGUF whose tokenizer is copied (default: the bundled SmolLM2).
        threads: threads that quantize (gguf-py, ggml, llama.cpp's quantizer; default: every core).

    Returns:
        ``path``.

    Raises:
        InputError: the disk lacks the space (checked first), ``path`` cannot be written, ``qtype`` is
            no llama.cpp type, or llama-cpp-python is missing for a llama.cpp type.
        BundledModelMissingError: SmolLM2's package is not installed (and no tokenizer source given).
    """
    from mechlab.models.bundled import bundled_gguf_path
    from mechlab.models.precision import check_disk

    shape = shape_named(shape)
    qtype = qtype.upper()
    path = check_target(Path(path), "GGUF file")
    tokenizer_source = bundled_gguf_path() if tokenizer_source is None else tokenizer_source
    native = qtype in NATIVE_TYPES
    if not native:
        _check_llamacpp_type(qtype)  # before minutes of writing the intermediate
    check_disk(path.parent, disk_needed(shape, qtype), f"a {qtype} file of {shape.name}")
    workers = threads or os.cpu_count() or 1
    with atomic_dir_sibling(path) as tmp:
        if native:
            _write_tensors(shape, tmp, qtype, seed, tokenizer_source, progress, workers)
        else:
            source = tmp.with_name("source-Q8_0.gguf")
            _write_tensors(shape, source, qtype, seed, tokenizer_source, progress, workers)
            _quantize(source, tmp, qtype, estimated_size(shape, qtype), progress, threads)
            source.unlink()
            tmp.chmod(0o644)  # llama.cpp's output comes from mkstemp (0o600), gguf-py's from open()
    return path


def _check_llamacpp_type(qtype: str) -> None:
    """Refuse a type llama.cpp's quantizer does not write, or a missing llama-cpp-python."""
    from mechlab.models.references import llamacpp

    llama_cpp = llamacpp.available()
    if llama_cpp is None:
        raise InputError(llamacpp.INSTALL)
    prefix = "LLAMA_FTYPE_MOSTLY_"
    if not hasattr(llama_cpp, prefix + qtype):
        kinds = sorted(n.removeprefix(prefix) for n in dir(llama_cpp) if n.startswith(prefix))
        raise InputError(
            f"{qtype!r} is neither F16, Q8_0 nor a llama.cpp quantization type; choose one of "
            f"F16, Q8_0, {', '.join(k for k in kinds if k not in NATIVE_TYPES)}."
        )


def _quantize(
    source: Path, target: Path, qtype: str, bound: int, progress: Progress | None, threads: int | None
) -> None:
    """llama.cpp's quantizer, run in a thread while this one reports the growing output's size."""
    from mechlab.models.references import llamacpp

    failure: list[BaseException] = []

    def run() -> None:
        try:
            llamacpp.quantize(source, target, qtype, threads=threads)
        except BaseException as error:
            failure.append(error)

    worker = threading.Thread(target=run, name="llama.cpp quantize", daemon=True)
    worker.start()
    stage = f"quantizing to {qtype}"
    while worker.is_alive():
        worker.join(0.5)
        if progress is not None:
            partial = [p.stat().st_size for p in target.parent.glob(f".{target.name}.*.partial")]
            done = target.stat().st_size if target.exists() else max(partial, default=0)
            progress(BigGGUFProgress(stage, min(done, bound), bound))
    if failure:
        raise failure[0]
    if progress is not None:
        size = target.stat().st_size
        progress(BigGGUFProgress(stage, size, size))


def _versions(qtype: str) -> dict[str, str]:
    """The library versions a file's bytes depend on: numpy's generator, llama.cpp's quantizer."""
    versions = {"numpy": np.__version__}
    if qtype not in NATIVE_TYPES:
        try:
            versions["llama-cpp-python"] = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            versions["llama-cpp-python"] = "missing"
    return versions


def cache_path(shape: "str | BigShape", qtype: str = "Q4_K_M", seed: int = 0) -> Path:
    """Where ``big_gguf`` keeps this file: ``<cache>/big-gguf/<shape>-<type>-seed<seed>-<key>.gguf``,
    the key a hash of the shape, type, seed, ``GENERATOR_VERSION`` and the versions of numpy (and of
    llama-cpp-python for its types)."""
    from mechlab.models.cache import cache_dir

    shape = shape_named(shape)
    qtype = qtype.upper()
    record = {
        "shape": dataclasses.asdict(shape),
        "qtype": qtype,
        "seed": seed,
        "generator": GENERATOR_VERSION,
        "versions": _versions(qtype),
    }
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "big-gguf" / f"{shape.name}-{qtype}-seed{seed}-{key}.gguf"


def big_gguf(
    shape: "str | BigShape", qtype: str = "Q4_K_M", seed: int = 0, *, progress: Progress | None = None
) -> Path:
    """The cached random-weight GGUF of ``shape`` as ``qtype``, written on first use (see
    ``write_big_gguf``; an 8B Q4_K_M takes minutes)."""
    path = cache_path(shape, qtype, seed)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_big_gguf(shape, path, qtype, seed, progress=progress)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mechlab.toy.big_gguf SHAPE [--type Q4_K_M] [--seed 0] [--out PATH]``."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    parser = argparse.ArgumentParser(
        prog="python -m mechlab.toy.big_gguf",
        description="Write a random-weight GGUF in a real model shape (without --out: into mechlab's cache).",
    )
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--type", dest="qtype", default="Q4_K_M", help="F16, Q8_0 or a llama.cpp type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="the file to write (default: the cache)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    with contextlib.ExitStack() as stack:
        console = Console(file=stack.enter_context(_terminal()))
        bar = stack.enter_context(Progress(*columns, console=console))
        task = bar.add_task(f"{args.shape} {args.qtype}", total=None)

        def show(state: Any) -> None:
            bar.update(task, description=state.stage, completed=state.done, total=state.total)

        try:
            if args.out is None:
                path = big_gguf(args.shape, args.qtype, args.seed, progress=show)
            else:
                path = write_big_gguf(args.shape, args.out, args.qtype, args.seed, progress=show)
        except InputError as error:
            console.print(f"[red]{error}[/red]")
            return 2
        bar.stop()
        size = path.stat().st_size
        console.print(
            f"{path}  {size / 1024**3:.2f} GiB  {time.perf_counter() - started:.0f} s", soft_wrap=True
        )
    Console().print(str(path), soft_wrap=True)
    return 0


def _terminal() -> contextlib.AbstractContextManager[IO[str]]:
    """Where the progress bar goes: a copy of stderr's descriptor, which stays on the terminal while
    llama.cpp's quantizer sends descriptor 2 to its log (``sys.stderr`` itself where it has none)."""
    try:
        return open(os.dup(sys.stderr.fileno()), "w", encoding="utf-8", errors="replace")
    except (AttributeError, OSError, io.UnsupportedOperation):
        return contextlib.nullcontext(sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
