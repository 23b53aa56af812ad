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

from mechlab.errors import InputError
from mechlab.models.info import ModelInfo
from mechlab.models.sources import SourceRegistry
from mechlab.models.sources.base import default_sources, resolve_source

__all__ = ["LoadedModel", "check_device", "default_sources", "load_model", "resolve_source"]

Status = Callable[[str], None]


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
    dtype: torch.dtype = torch.float32,
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
        dtype: parameter dtype; float32 reproduces the source's logits most closely.
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
    device = check_device(device)
    registry = sources or default_sources()
    scheme, target = registry.resolve(source)
    if check_memory and scheme == "gguf":
        from mechlab.models.memory import check_fits

        check_fits(Path(target), dtype, device)
    model, info = registry.get(scheme).load(
        target, source=source, device=device, dtype=dtype, status=status or _quiet
    )
    info = dataclasses.replace(info, load_seconds=round(time.perf_counter() - start, 3))
    return LoadedModel(model, getattr(model, "tokenizer", None), info)


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
