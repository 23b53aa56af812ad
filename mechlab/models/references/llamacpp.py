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

from collections.abc import Collection, Sequence
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


class LlamaCpp:
    """A GGUF file loaded by llama.cpp, returning its logits for given token ids.

    Use as a context manager (or call ``close``): llama.cpp's model is freed on exit.
    """

    def __init__(self, path: Path, *, n_ctx: int = 512, threads: int | None = None) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as error:
            raise InputError(INSTALL) from error
        self._llm = Llama(
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


def available() -> Any:
    """The ``llama_cpp`` module, or ``None`` where llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp
