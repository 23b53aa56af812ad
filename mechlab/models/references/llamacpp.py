"""llama.cpp as the reference: the operator's own runtime, run on the same token ids.

transformers and mechlab dequantize a GGUF file the same way, so a conversion bug they share is
invisible to ``verify --reference transformers``. llama.cpp (through ``llama-cpp-python``, the
optional extra ``mechlab[llamacpp]``) computes the file as the runtime does, so it settles what the
model the operator runs outputs. It also quantizes activations (the dot products of a quantized file
run on quantized activations), so even a faithful conversion differs slightly: on SmolLM2 Q4_1 the
mean KL is ~0.004–0.005 nats per position with ~90–95% top-1 agreement, while an F16 file agrees to
~1e-5. The tolerances below sit above that floor and far below what a real conversion bug gives
(a wrong attention scale costs ~0.4 nats).
"""

import ctypes
import logging
import os
import re
import sys
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mechlab.errors import InputError

INSTALL = (
    "llama.cpp is the reference here, through llama-cpp-python, which is not installed. Install it "
    "with `make install-llamacpp` (or `pip install 'mechlab[llamacpp]'`; it builds llama.cpp from "
    "source, a few minutes on 2 cores), or verify with --reference transformers."
)
# Mean KL (nats per position) and top-1 agreement a faithful conversion reaches against llama.cpp.
MAX_MEAN_KL = 0.01
MIN_TOP1 = 0.9
# llama.cpp's names (``name-LAYER``) for the intermediate tensors matched with mechlab's hook points,
# by hook kind, the first found taken: the attention output (after the output projection, and after
# the post-attention norm where the architecture has one, as Gemma's do), the residual stream entering
# the MLP, the MLP output (after a post-MLP norm likewise), and the block output. ``_complete`` then
# takes the MLP output from the residual stream wherever both sides of the block are named (exact, and
# right where a graph names the post-MLP norm without a layer), and an unnamed attention output likewise.
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "attn_out": ("attn_post_norm", "attn_out"),
    "resid_mid": ("sa_out", "ffn_inp"),
    "mlp_out": ("ffn_post_norm", "ffn_out"),
    "resid_post": ("l_out",),
}
_KIND_OF = {name: kind for kind, names in LAYER_TENSORS.items() for name in names}
_RANK = {name: rank for names in LAYER_TENSORS.values() for rank, name in enumerate(names)}
_LAYER_NAME = re.compile(r"^(?P<name>[a-z_]+)-(?P<layer>\d+)$")
_GGML_F32 = 0


class LlamaCpp:
    """A GGUF file loaded by llama.cpp, returning its logits for given token ids.

    Use as a context manager (or call ``close``): llama.cpp's model is freed on exit.
    """

    def __init__(self, path: Path, *, n_ctx: int = 512, threads: int | None = None) -> None:
        llama_cpp = available()
        if llama_cpp is None:
            raise InputError(INSTALL)
        self._llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=threads, seed=0
        )
        self.n_ctx = n_ctx

    def __enter__(self) -> "LlamaCpp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._llm.close()

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """llama.cpp's logits ``[pos, d_vocab]`` for ``tokens`` (from an empty context)."""
        if len(tokens) > self.n_ctx:
            raise InputError(f"{len(tokens)} tokens do not fit llama.cpp's context of {self.n_ctx}.")
        self._llm.reset()
        self._llm.eval(list(tokens))
        return np.array(self._llm.scores[: len(tokens)], dtype=np.float64)

    def greedy(self, tokens: Sequence[int], max_new_tokens: int, stop_ids: Collection[int]) -> list[int]:
        """llama.cpp's greedy continuation of ``tokens`` (stops after a stop id, which it includes)."""
        self._llm.reset()
        self._llm.eval(list(tokens))
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self._llm.scores[self._llm.n_tokens - 1]))
            new.append(token)
            if token in stop_ids or self._llm.n_tokens >= self.n_ctx:
                break
            self._llm.eval([token])
        return new

    def intermediates(self, tokens: Sequence[int]) -> dict[tuple[str, int], np.ndarray]:
        """llama.cpp's intermediate tensors for ``tokens`` (one pass from an empty context), keyed by
        ``(kind, layer)`` with mechlab's hook kinds (``LAYER_TENSORS``), each ``[pos, width]``.

        A second context on the same weights runs with llama.cpp's evaluation callback (``cb_eval``),
        which hands over every tensor of the graph as it is computed; the named ones are copied out.
        """
        import llama_cpp

        ggml = _ggml()
        found: dict[tuple[str, int], tuple[int, np.ndarray]] = {}  # (kind, layer) → (rank, tensor)

        def wanted(tensor: int) -> tuple[str, int] | None:
            match = _LAYER_NAME.match(ggml.ggml_get_name(tensor).decode(errors="replace"))
            if match is None or match["name"] not in _KIND_OF:
                return None
            return match["name"], int(match["layer"])

        failures: list[BaseException] = []

        def copy(tensor: int, name_layer: tuple[str, int]) -> None:
            # The tensor's type is its struct's first field; the tensors named above are F32 rows.
            if ctypes.cast(tensor, ctypes.POINTER(ctypes.c_int32))[0] != _GGML_F32:
                return
            if not ggml.ggml_is_contiguous(tensor):
                return
            rows, n = int(ggml.ggml_nrows(tensor)), int(ggml.ggml_nelements(tensor))
            name, layer = name_layer
            key, rank = (_KIND_OF[name], layer), _RANK[name]
            if key in found and found[key][0] <= rank:
                return
            out = np.empty(n, dtype=np.float32)
            ggml.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, out.nbytes)
            found[key] = rank, out.reshape(rows, n // rows).astype(np.float64)

        @llama_cpp.ggml_backend_sched_eval_callback  # type: ignore[untyped-decorator]
        def observe(tensor: int, ask: bool, user_data: object) -> bool:
            # ctypes drops exceptions raised in a callback; keep them and raise after the pass.
            try:
                key = wanted(tensor)
                if not ask and key is not None:
                    copy(tensor, key)
                return key is not None or not ask
            except BaseException as error:
                failures.append(error)
                return False

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = max(len(tokens), 8)
        params.cb_eval = observe
        ctx = llama_cpp.llama_init_from_model(self._llm.model, params)
        if not ctx:
            raise InputError("llama.cpp could not create a context to read its intermediate tensors.")
        batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            batch.n_tokens = len(tokens)
            for i, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise InputError(f"llama.cpp failed to evaluate {len(tokens)} tokens.")
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)
        if failures:
            raise InputError(
                "Reading llama.cpp's intermediate tensors failed: "
                f"{type(failures[0]).__name__}: {failures[0]}. Compare logits only (drop --layers)."
            ) from failures[0]
        if not found:
            raise InputError(
                f"llama.cpp computed none of the tensors mechlab compares ({', '.join(_KIND_OF)} with a "
                "layer number) for this architecture; compare logits only (drop --layers)."
            )
        return _complete({key: tensor for key, (_, tensor) in found.items()})


def _complete(tensors: dict[tuple[str, int], np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """The MLP output (always, where the residual stream around it is named) and an attention output
    the graph leaves unnamed, from the residual stream.

    A block's MLP output is what it adds to the residual stream, ``l_out - ffn_inp``: exact, after a
    post-MLP norm too (Gemma 2's graph names that norm without a layer, so ``ffn_out`` there is the
    pre-norm tensor). Where the graph names no attention output (Qwen2, Qwen3, GPT-2), it is what the
    block adds before the MLP, ``ffn_inp - l_out`` of the previous block (from layer 1 on).
    """
    out = dict(tensors)
    for kind, layer in tensors:
        mid, post = tensors.get(("resid_mid", layer)), tensors.get(("resid_post", layer))
        if kind == "resid_post" and mid is not None and post is not None and mid.shape == post.shape:
            out["mlp_out", layer] = post - mid
        before = tensors.get(("resid_post", layer - 1))
        if kind == "resid_mid" and ("attn_out", layer) not in tensors and before is not None:
            if mid is not None and before.shape == mid.shape:
                out["attn_out", layer] = mid - before
    return out


def quantize(source: Path, target: Path, kind: str, *, threads: int | None = None) -> Path:
    """llama.cpp's quantizer (``llama_model_quantize``): ``source`` (re-)quantized to ``kind``
    (``"Q2_K"``, ``"Q4_K_M"``, ``"Q8_0"``…, llama.cpp's ``LLAMA_FTYPE_MOSTLY_*`` names) at ``target``,
    written to a temporary sibling and renamed into place.

    Raises:
        InputError: llama-cpp-python is missing, ``kind`` is no llama.cpp file type, or llama.cpp
            failed (its log says why).
    """
    llama_cpp = available()
    if llama_cpp is None:
        raise InputError(INSTALL)
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}", None)
    if ftype is None:
        kinds = sorted(
            n.removeprefix("LLAMA_FTYPE_MOSTLY_")
            for n in dir(llama_cpp)
            if n.startswith("LLAMA_FTYPE_MOSTLY_")
        )
        raise InputError(f"{kind!r} is no llama.cpp quantization type; choose one of {', '.join(kinds)}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize = ftype, True
    params.nthread = threads or os.cpu_count() or 1
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    partial = Path(name)
    paths = str(source).encode(), str(partial).encode()
    try:
        with _stderr_kept() as log:
            status = llama_cpp.llama_model_quantize(*paths, ctypes.byref(params))
        if status != 0:
            raise InputError(f"llama.cpp could not quantize {source} to {kind}:\n{log[0][-2000:]}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


@contextmanager
def _stderr_kept() -> Iterator[list[str]]:
    """Within the block, the process's stderr (where llama.cpp's quantizer writes a line per tensor)
    goes to a temporary file; after it, the yielded list holds what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    kept: list[str] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield kept
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            kept.append(log.read())


def _ggml() -> Any:
    """ggml's tensor accessors from the library llama-cpp-python ships."""
    import llama_cpp

    found = sorted(Path(llama_cpp.__file__).parent.glob("lib/*ggml-base*"))
    if not found:
        raise InputError(
            "llama-cpp-python ships no ggml library (lib/*ggml-base*) to read intermediate tensors "
            "with; reinstall it (make install-llamacpp), or compare logits only (drop --layers)."
        )
    lib = ctypes.CDLL(str(found[0]))
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    for name, restype, argtypes in (
        ("ggml_get_name", ctypes.c_char_p, [pointer]),
        ("ggml_nelements", ctypes.c_int64, [pointer]),
        ("ggml_nrows", ctypes.c_int64, [pointer]),
        ("ggml_is_contiguous", ctypes.c_bool, [pointer]),
        ("ggml_backend_tensor_get", None, [pointer, pointer, size, size]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def available() -> Any:
    """The ``llama_cpp`` module (its log limited to errors), or ``None`` where llama-cpp-python is
    not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    # llama.cpp's log goes through this logger; unset, it prints every line (the quantizer's, per tensor).
    logger = logging.getLogger("llama-cpp-python")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    return llama_cpp
