"""The fix measured where it will run: llama.cpp, on the GGUF file, with or without a control vector.

``Runtime`` is ``mechlab.models.references.llamacpp.LlamaCpp`` (llama.cpp through llama-cpp-python)
plus a control vector: ``set_control_vector`` hands the flat buffer ``common_control_vector_load``
builds (block 1's vector first) to ``llama_set_adapter_cvec`` with the layer range llama-cli uses by
default (1 to the block count), which is what ``llama-cli --control-vector FILE`` runs.

``measure`` gives, from llama.cpp alone: a ``LogitGap`` over prompts and the mean KL on neutral text
between two files (or one file with and without a control vector).
"""

import ctypes
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mechlab.errors import InputError
from mechlab.fix.ablation import LogitGap, mean_kl
from mechlab.fix.control_vector import ControlVector
from mechlab.models.references.llamacpp import LlamaCpp
from mechlab.types import HookedModel


class Runtime(LlamaCpp):
    """A GGUF file in llama.cpp, optionally with a control vector applied (a context manager)."""

    def __init__(self, path: Path, *, n_ctx: int = 1024, threads: int | None = None) -> None:
        super().__init__(Path(path), n_ctx=n_ctx, threads=threads)
        self.path = Path(path)

    def __enter__(self) -> "Runtime":
        return self

    def set_control_vector(self, vector: ControlVector | None, strength: float = 1.0) -> None:
        """Apply ``vector`` (scaled by ``strength``) to every later evaluation, or clear it (``None``).

        Raises:
            InputError: llama.cpp refuses it (its width is not the model's, or too many blocks).
        """
        import llama_cpp

        model = self._llm.model
        n_embd, n_layer = llama_cpp.llama_model_n_embd(model), llama_cpp.llama_model_n_layer(model)
        if vector is None:
            status = llama_cpp.llama_set_adapter_cvec(self._llm.ctx, None, 0, n_embd, -1, -1)
        else:
            if vector.width != n_embd or vector.n_layers > n_layer:
                raise InputError(
                    f"The control vector is {vector.width} wide for {vector.n_layers} blocks; "
                    f"{self.path.name} has {n_embd} for {n_layer}. Export it from this model."
                )
            flat = np.ascontiguousarray(vector.flat(strength), dtype=np.float32)
            data = flat.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            status = llama_cpp.llama_set_adapter_cvec(self._llm.ctx, data, flat.size, n_embd, 1, n_layer)
        if status != 0:
            raise InputError(f"llama.cpp refused the control vector (status {status}).")

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """llama.cpp's logits ``[prompt, d_vocab]`` for the token after each prompt (token ids)."""
        return np.stack([self.logits(list(tokens))[-1] for tokens in prompts])

    def log_probs(self, tokens: Sequence[int]) -> Tensor:
        """Next-token log-probabilities ``[pos, d_vocab]`` at every position of ``tokens``."""
        return torch.log_softmax(torch.from_numpy(self.logits(list(tokens))), dim=-1)


@dataclasses.dataclass(frozen=True)
class RuntimeGap:
    """A behaviour measured in llama.cpp before and after a fix, and the KL on neutral text.

    Attributes:
        before, after: ``[prompt]`` the behaviour on the original and the fixed file.
        kl: mean KL on neutral text, original ‖ fixed (nats per token).
        n_neutral: the neutral tokens.
        before_log_probs, after_log_probs: ``[pos, d_vocab]`` on the neutral text, each file.
    """

    before: Tensor
    after: Tensor
    kl: float
    n_neutral: int
    before_log_probs: Tensor
    after_log_probs: Tensor

    @property
    def fall(self) -> float:
        """The fall of the mean |gap|, as a fraction of where it started."""
        return 1 - float(self.after.abs().mean()) / float(self.before.abs().mean())


def gap_in(runtime: Runtime, behaviour: LogitGap, model: HookedModel) -> Tensor:
    """``behaviour`` in llama.cpp, on the token ids mechlab's tokenizer gives."""
    encoded, a, b = behaviour.tokens(model)
    logits = runtime.next_token_logits([e.tolist() for e in encoded])
    return torch.from_numpy(logits[:, a] - logits[:, b])


def compare_files(
    before: Path,
    after: Path,
    behaviour: LogitGap,
    neutral: Tensor,
    model: HookedModel,
    *,
    threads: int | None = None,
) -> RuntimeGap:
    """``behaviour`` and the KL on ``neutral`` token ids, in llama.cpp on two GGUF files."""
    n_ctx = max(1024, int(neutral.numel()) + 8)
    runs = []
    for path in (before, after):
        with Runtime(path, n_ctx=n_ctx, threads=threads) as runtime:
            runs.append((gap_in(runtime, behaviour, model), runtime.log_probs(neutral.tolist())))
    (gap_before, reference), (gap_after, changed) = runs
    return RuntimeGap(
        gap_before, gap_after, mean_kl(reference, changed), int(neutral.numel()), reference, changed
    )
