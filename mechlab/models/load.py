"""``load_model``: turn a source string into a hooked model, its tokenizer and a ``ModelInfo``.

The source string is resolved by the installed model sources (``mechlab.models.sources``: one
module per source, registered as entry points), and the source that claims it loads it. The hooked
model is a TransformerLens 4 ``TransformerBridge`` in compatibility mode (``mechlab.models.bridge``):
HookedTransformer hook names, ``run_with_cache``, ``run_with_hooks`` and ``ActivationCache``, with the
weights exactly as the original model has them, so logits match the source model.

It tokenizes the way the model's own runtime does: BOS is prepended only when the model's
tokenizer metadata asks for it (SmolLM2's GGUF says ``add_bos_token = false``).
"""

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mechlab.errors import MSG_QUANTIZED_SOURCE, MSG_WEIGHTS_MODE, InputError
from mechlab.models.info import ModelInfo
from mechlab.models.sources import SourceRegistry
from mechlab.models.sources.base import default_sources, resolve_source
from mechlab.models.spec import ModelSpec, remember

__all__ = ["WEIGHTS", "LoadedModel", "check_device", "default_sources", "load_model", "resolve_source"]

Status = Callable[[str], None]
# Loading modes: the parameters' dtype, or ``quantized`` (a GGUF file's matrices kept in their blocks).
WEIGHTS: dict[str, torch.dtype | None] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "quantized": None,
}


class LoadedModel(NamedTuple):
    """``model, tokenizer, info = load_model(...)``; also usable by attribute."""

    model: Any
    tokenizer: Any
    info: ModelInfo


def _quiet(_: str) -> None:
    return None


def load_model(
    source: str = "smollm2",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    weights: str | None = None,
    status: Status | None = None,
    sources: SourceRegistry | None = None,
    check_memory: bool = True,
) -> LoadedModel:
    """Load a model from any supported source as a HookedTransformer-protocol model.

    Args:
        source: ``smollm2`` (bundled), ``PATH.gguf`` / ``gguf:PATH``, ``ollama:NAME[:TAG]``,
            a Hugging Face directory (``DIR`` / ``hf:DIR``), a Hub name (``hf:ORG/NAME``),
            or ``toy:...`` (see ``mechlab.toy.model``).
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        dtype: parameter dtype (default float32, which reproduces the source's logits most closely);
            in quantized mode, the activations' dtype.
        weights: the loading mode, ``float32`` | ``bfloat16`` | ``float16`` (the same as ``dtype``)
            or ``quantized``: a GGUF file's weight matrices stay in their quantized blocks and are
            dequantized as they are used (``mechlab.models.quantized``; about the file's size in
            memory instead of 4 bytes per parameter).
        status: called with a short message before each slow step (conversion, hashing…).
        sources: the model sources to resolve ``source`` with (default: every installed one, the
            entry-point group ``mechlab.sources``; ``SourceRegistry.with_sources`` adds more).
        check_memory: for a GGUF file, estimate from its header whether loading and a forward pass
            fit the memory available (``mechlab.plan_memory``) before converting or loading.

    Returns:
        ``LoadedModel(model, tokenizer, info)``.

    Raises:
        SourceError, ModelNotFoundError (and subclasses), CorruptModelError,
        UnsupportedArchitectureError, MemoryPlanError — each saying what was wrong and what to do.
    """
    start = time.perf_counter()
    mode, dtype = _mode(weights, dtype)
    device = check_device(device)
    registry = sources or default_sources()
    scheme, target = registry.resolve(source)
    if mode == "quantized" and scheme != "gguf":
        raise InputError(MSG_QUANTIZED_SOURCE.format(source=source, scheme=scheme))
    if check_memory and scheme == "gguf":
        from mechlab.models.memory import check_fits

        check_fits(Path(target), mode, device)
    if mode == "quantized":
        from mechlab.models.sources.gguf import load_gguf

        model, info = load_gguf(
            source, Path(target), device=device, dtype=dtype, say=status or _quiet, quantized=True
        )
    else:
        model, info = registry.get(scheme).load(
            target, source=source, device=device, dtype=dtype, status=status or _quiet
        )
    info = dataclasses.replace(info, load_seconds=round(time.perf_counter() - start, 3), weights=mode)
    if sources is None:  # a model from the installed sources can be loaded again elsewhere by its spec
        remember(model, ModelSpec(source, str(device), str(dtype).removeprefix("torch."), weights))
    return LoadedModel(model, getattr(model, "tokenizer", None), info)


def _mode(weights: str | None, dtype: torch.dtype | None) -> tuple[str, torch.dtype]:
    """The loading mode and the dtype the model computes in, from ``weights`` and ``dtype``."""
    if weights is None:
        dtype = dtype or torch.float32
        mode = next((name for name, value in WEIGHTS.items() if value == dtype), str(dtype))
        return mode, dtype
    if weights not in WEIGHTS:
        raise InputError(MSG_WEIGHTS_MODE.format(weights=weights, modes=", ".join(WEIGHTS)))
    implied = WEIGHTS[weights]
    if implied is not None and dtype is not None and dtype != implied:
        raise InputError(
            f"weights={weights!r} loads {implied} parameters, but dtype={dtype} was passed too. "
            "Pass one of them (dtype is the activations' dtype only in quantized mode)."
        )
    return weights, implied or dtype or torch.float32


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` this machine has.

    Raises:
        InputError: not a device name, or a CUDA / MPS device this machine does not have.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"{device!r} is not a device: expected cpu, cuda, cuda:N or mps.") from error
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(
                f"{device!r}: this machine has no CUDA device (or torch was built without CUDA). Use cpu."
            )
        if parsed.index is not None and parsed.index >= count:
            raise InputError(
                f"{device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}."
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{device!r}: MPS (Apple GPUs) is not available on this machine. Use cpu.")
    return parsed
