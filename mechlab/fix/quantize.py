"""Dequantizing and re-quantizing GGUF tensors, one block of rows at a time.

Every ggml type is read with gguf-py's dequantizers. Writing back goes, in order of preference:

- ``F32``, ``F16``, ``BF16``, ``Q4_0``, ``Q4_1``, ``Q5_0``, ``Q5_1``, ``Q8_0``: gguf-py's quantizers
  (numpy ports of ggml's reference rounding, the code llama.cpp's converter writes these types with);
- the K-quants (``Q2_K`` … ``Q6_K``), ``IQ4_NL``, ``IQ4_XS`` and the ternary types: ggml's own
  ``ggml_quantize_chunk`` from the ggml library llama-cpp-python ships, the function llama.cpp's
  quantizer (``llama_model_quantize``) calls per tensor, without an importance matrix;
- anything else (the ``IQ1``–``IQ3`` types, which need an importance matrix; K-quants without
  llama-cpp-python installed): ``Q8_0``, which keeps the edit at 8.5 bits per weight, and the caller
  reports the change.

Quantizing is row-wise in every type, so a tensor can be written in blocks of rows.

An edit that should leave a tensor orthogonal to a direction ``u`` survives rounding only in part
when the grid is coarse: ``round_orthogonal`` (matrices) and ``round_rows_orthogonal`` (embedding
rows) round so that as little along ``u`` is left as the grid allows.
"""

import ctypes
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

FALLBACK = "Q8_0"
# gguf-py writes these (gguf.quants.quantize); F32 and F16 are plain numpy casts.
GGUF_PY = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def type_name(ggml_type: int) -> str:
    """``3`` → ``"Q4_1"``: the ggml type's name."""
    import gguf

    return gguf.GGMLQuantizationType(ggml_type).name


def block_size(ggml_type: int) -> int:
    """Values per quantization block of ``ggml_type`` (1 for F32/F16)."""
    import gguf

    return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)][0])


def type_id(name: str) -> int:
    import gguf

    return int(gguf.GGMLQuantizationType[name.upper()])


def row_bytes(ggml_type: int, n_per_row: int) -> int:
    """Bytes one row of ``n_per_row`` values takes in ``ggml_type``."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    if n_per_row % block:
        raise ValueError(f"{n_per_row} values per row do not fill {type_name(ggml_type)} blocks of {block}.")
    return n_per_row // block * size


def dequantize(raw: np.ndarray, ggml_type: int, n_per_row: int) -> np.ndarray:
    """Rows of ``ggml_type`` bytes ``[rows, row_bytes]`` → float32 ``[rows, n_per_row]``."""
    import gguf

    rows = raw.reshape(-1, row_bytes(ggml_type, n_per_row))
    out = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(ggml_type))
    return np.asarray(out, dtype=np.float32).reshape(-1, n_per_row)


def writer_for(ggml_type: int) -> str | None:
    """Who can write ``ggml_type``: ``"gguf-py"``, ``"llama.cpp"``, or ``None`` (fall back)."""
    name = type_name(ggml_type)
    if name in GGUF_PY:
        return "gguf-py"
    ggml = _ggml()
    if ggml is None or (name.startswith("IQ") and bool(ggml.ggml_quantize_requires_imatrix(ggml_type))):
        return None
    if name.startswith(("Q", "IQ", "TQ")):
        return "llama.cpp"
    return None


def quantize(values: np.ndarray, ggml_type: int) -> bytes:
    """float32 rows ``[rows, n_per_row]`` → ``ggml_type`` bytes (see ``writer_for``)."""
    import gguf

    values = np.ascontiguousarray(values, dtype=np.float32)
    rows, n_per_row = values.shape
    if type_name(ggml_type) in GGUF_PY:
        return gguf.quants.quantize(values, gguf.GGMLQuantizationType(ggml_type)).tobytes()
    ggml = _ggml()
    if ggml is None:
        raise ValueError(f"Writing {type_name(ggml_type)} needs llama.cpp's ggml library (llama-cpp-python).")
    out = ctypes.create_string_buffer(rows * row_bytes(ggml_type, n_per_row))
    ggml.ggml_quantize_init(ggml_type)
    written = ggml.ggml_quantize_chunk(
        ggml_type, values.ctypes.data_as(ctypes.c_void_p), out, 0, rows, n_per_row, None
    )
    if written != len(out):
        raise ValueError(f"ggml wrote {written} bytes of {type_name(ggml_type)}, expected {len(out)}.")
    return out.raw


def round_orthogonal(edited: np.ndarray, u: np.ndarray, new_type: int) -> tuple[np.ndarray, bytes]:
    """Round a matrix ``edited`` ``[rows, width]`` with ``uᵀ edited = 0`` to ``new_type``, keeping as
    little along ``u`` as the grid allows: plain rounding, or rounding row by row with each row's
    target moved to cancel the component along ``u`` the rows rounded before it left (least squares
    over the rows still to come; rows with the largest ``|u_r|`` last, as they cancel most per
    change), whichever keeps less.

    Returns:
        The rounded values (float64) and their bytes in ``new_type``."""
    plain = quantize(edited.astype(np.float32), new_type)
    rounded = dequantize(np.frombuffer(plain, np.uint8), new_type, edited.shape[1]).astype(np.float64)
    if type_name(new_type) in ("F32", "F16", "BF16"):
        return rounded, plain
    order = np.argsort(np.abs(u), kind="stable")
    carried_rows = np.empty_like(edited)
    chunks: dict[int, bytes] = {}
    carried = np.zeros(edited.shape[1])
    weight_left = float(u @ u)
    for row in order:
        weight_left -= float(u[row] ** 2)
        target = edited[row] - carried * u[row] / (u[row] ** 2 + weight_left) if u[row] else edited[row]
        data = quantize(target[None].astype(np.float32), new_type)
        carried_rows[row] = dequantize(np.frombuffer(data, np.uint8), new_type, edited.shape[1])[0]
        chunks[int(row)] = data
        carried += u[row] * (carried_rows[row] - edited[row])
    if np.linalg.norm(carried_rows.T @ u) < np.linalg.norm(rounded.T @ u):
        return carried_rows, b"".join(chunks[row] for row in range(edited.shape[0]))
    return rounded, plain


def round_rows_orthogonal(
    edited: np.ndarray, u: np.ndarray, new_type: int, rounds: int = 4, value: float = 0.0
) -> bytes:
    """Round rows that should each have the component ``value`` along ``u`` (an embedding's) to
    ``new_type``, moving the target against the rounding's error along ``u`` ``rounds`` times."""
    if type_name(new_type) in ("F32", "F16", "BF16"):
        return quantize(edited.astype(np.float32), new_type)
    target = edited.copy()
    for _ in range(rounds):
        data = quantize(target.astype(np.float32), new_type)
        rounded = dequantize(np.frombuffer(data, np.uint8), new_type, edited.shape[1])
        target -= np.outer(rounded @ u - value, u)
    return quantize(target.astype(np.float32), new_type)


_LIB: list[Any] = []


def _ggml() -> Any:
    """ggml's quantizer from llama-cpp-python's library, or ``None`` where it is not installed."""
    if _LIB:
        return _LIB[0]
    lib = None
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin is not None:
        found = sorted(Path(spec.origin).parent.glob("lib/*ggml-base*"))
        if found:
            lib = ctypes.CDLL(str(found[0]))
            lib.ggml_quantize_chunk.restype = ctypes.c_size_t
            lib.ggml_quantize_chunk.argtypes = [
                ctypes.c_int,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_void_p,
            ]
            lib.ggml_quantize_init.restype = None
            lib.ggml_quantize_init.argtypes = [ctypes.c_int]
            lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
            lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    _LIB.append(lib)
    return lib
