"""Hugging Face checkpoints: a local directory (offline), or a Hub name when the Hub is reachable."""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mechlab.errors import MSG_HUB_UNREACHABLE, CorruptModelError, HubUnreachableError, ModelNotFoundError

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


def load_hub(name: str, *, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` by Hub name (from the local HF cache when offline).

    Raises:
        HubUnreachableError: the Hub cannot be reached and the model is not cached locally.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise HubUnreachableError(MSG_HUB_UNREACHABLE.format(name=name, error=error)) from error
    return model, tokenizer


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
