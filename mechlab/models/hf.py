"""Hugging Face checkpoints: a local directory (offline), or a Hub name when the Hub is reachable.

A Hub name may also be a TransformerLens model name (``gpt2-small``, ``pythia-70m``): TransformerLens'
alias table turns it into the Hub name (``gpt2``, ``EleutherAI/pythia-70m``) before the Hub is asked.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mechlab.errors import (
    MSG_HUB_FAILED,
    MSG_HUB_GATED,
    MSG_HUB_NOT_FOUND,
    MSG_HUB_OFFLINE,
    MSG_HUB_UNREACHABLE,
    CorruptModelError,
    HubGatedModelError,
    HubModelNotFoundError,
    HubUnreachableError,
    MechlabError,
    ModelNotFoundError,
)

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


@contextmanager
def quiet_transformers(status: Callable[[str], None] | None = None) -> Iterator[None]:
    """Silence transformers' progress bars and info logs; report GGUF dequantization to ``status``.

    transformers' GGUF loader iterates with ``tqdm`` directly, bypassing its own progress switch, so
    for the duration of this block that module's ``tqdm`` is replaced by a counter that reports
    ``dequantizing tensors i/n`` to ``status``.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    def counting(iterable: Iterable[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = list(iterable)
        for i, item in enumerate(items, 1):
            if status is not None and (i % 8 == 0 or i == len(items)):
                status(f"dequantizing tensors {i}/{len(items)}")
            yield item

    bars_were_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    original_tqdm = gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf_utils.tqdm = counting
    try:
        yield
    finally:
        gguf_utils.tqdm = original_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()


def is_hf_dir(path: Path) -> bool:
    """Whether ``path`` looks like a Hugging Face model directory."""
    return path.is_dir() and (path / "config.json").is_file()


def load_dir(path: Path, *, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local Hugging Face directory, never touching the network.

    The tokenizer is ``None`` when the directory has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not is_hf_dir(path):
        raise ModelNotFoundError(
            f"{path} is not a Hugging Face model directory: expected {path / 'config.json'} beside "
            "the weights (model.safetensors). Pass a directory saved with save_pretrained(), or a GGUF file."
        )
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise CorruptModelError(
            f"{path} has config.json but no weights (looked for {', '.join(WEIGHT_PATTERNS)}). "
            "Copy the model's weight files into it."
        )
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise CorruptModelError(f"transformers could not load {path}: {error}") from error
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError):
        tokenizer = None
    return model, tokenizer


def official_name(name: str) -> str:
    """The Hub name of a TransformerLens model name (case-insensitive), else ``name`` unchanged.

    >>> official_name("gpt2-small"), official_name("pythia-70m"), official_name("org/model")
    ('gpt2', 'EleutherAI/pythia-70m', 'org/model')
    """
    from transformer_lens.supported_models import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:  # not in TransformerLens' table: take the name as a Hub name
        return name


def load_hub(name: str, *, dtype: torch.dtype, requested: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` by Hub name (from the local HF cache when offline).

    Args:
        name: the Hub name, e.g. ``"gpt2"`` or ``"EleutherAI/pythia-70m"``.
        dtype: parameter dtype.
        requested: the name the user gave, when it differs (a TransformerLens alias); errors name both.

    Raises:
        HubUnreachableError: the Hub cannot be reached (or offline mode is on) and the model is not
            in the local HF cache.
        HubModelNotFoundError: the Hub has no such model; ``HubGatedModelError`` if it is gated.
        ModelNotFoundError: any other failure to fetch the files (the message quotes it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise hub_error(name, error, requested=requested) from error
    return model, tokenizer


def hub_error(name: str, error: BaseException, *, requested: str | None = None) -> MechlabError:
    """The mechlab error for a failed Hub load, chosen by the huggingface_hub exception behind it.

    transformers re-raises huggingface_hub's exceptions as ``OSError`` chained to the original, so
    the chain (``__cause__``, then ``__context__``) is searched for the first class that decides.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    label = repr(name) if requested in (None, name) else f"{requested!r} (TransformerLens' name for {name!r})"
    for cause in _chain(error):
        if isinstance(cause, GatedRepoError):
            return HubGatedModelError(MSG_HUB_GATED.format(label=label, name=name))
        if isinstance(cause, RepositoryNotFoundError):
            return HubModelNotFoundError(MSG_HUB_NOT_FOUND.format(label=label, name=name))
        if isinstance(cause, LocalEntryNotFoundError | OfflineModeIsEnabled) and constants.is_offline_mode():
            return HubUnreachableError(MSG_HUB_OFFLINE.format(label=label, name=name))
        # huggingface_hub raises LocalEntryNotFoundError when it cannot reach the Hub and has no copy.
        if isinstance(cause, LocalEntryNotFoundError | ConnectionError | TimeoutError):
            *_, root = _chain(error, context=False)
            cause_text = f"{type(root).__name__}: {root}"
            return HubUnreachableError(MSG_HUB_UNREACHABLE.format(label=label, name=name, error=cause_text))
    return ModelNotFoundError(MSG_HUB_FAILED.format(label=label, error=error))


def _chain(error: BaseException, *, context: bool = True) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from (and, with ``context``, raised during),
    outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (current.__context__ if context else None)


def storage_dtypes(path: Path) -> dict[str, int]:
    """Tensor counts per stored dtype in a directory's safetensors files, e.g. ``{"BF16": 272}``."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                dtype = handle.get_slice(key).get_dtype()
                counts[dtype] = counts.get(dtype, 0) + 1
    return counts
