"""``PATH.gguf`` / ``gguf:PATH``: a GGUF file (llama.cpp, LM Studio, an Ollama blob), converted once."""

import contextlib
from pathlib import Path
from typing import Any

import torch

from mechlab.models import gguf, hf, precision
from mechlab.models.bridge import info_from, wrap_hf_model
from mechlab.models.info import ModelInfo
from mechlab.models.sources.base import Source, Status


class GGUFSource(Source):
    scheme = "gguf"
    forms = ("PATH.gguf | gguf:PATH       a GGUF file (llama.cpp / LM Studio / Ollama blob)",)

    def claims(self, text: str) -> bool:
        return Path(text).expanduser().is_file()

    def load(
        self, target: str, *, source: str, device: str | torch.device, dtype: torch.dtype, status: Status
    ) -> tuple[Any, ModelInfo]:
        return load_gguf(source, Path(target), device=device, dtype=dtype, say=status)


def load_gguf(
    source: str, path: Path, *, device: Any, dtype: torch.dtype, say: Status, quantized: bool = False
) -> tuple[Any, ModelInfo]:
    """Load a GGUF file from its converted copy in ``dtype``, or with ``quantized=True`` from the file's
    own blocks (``mechlab.models.quantized``; ``dtype`` is then the activations' dtype)."""
    say(f"checking {path.name}")
    path = path.expanduser()
    converted, header, sha, was_cached = gguf.ensure_converted(path, status=say, weights=not quantized)
    say("loading converted weights" if was_cached else "loading the new converted copy")
    try:
        if quantized:
            say("mapping the file's quantized blocks")
            hf_model, tokenizer = _load_quantized(path, converted, header)
        else:
            if dtype in precision.NAMES:
                say(f"writing the {precision.NAMES[dtype]} copy (once)")
            hf_model, tokenizer = hf.load_dir(precision.copy_in(converted, dtype), dtype=dtype)
    except Exception:
        if not was_cached:  # transformers cannot read the copy it just wrote: later loads must not reuse it
            gguf.discard_converted(converted)
        raise
    with _shapes_only(quantized):
        model = wrap_hf_model(hf_model, tokenizer, device=device, dtype=dtype, prepend_bos=header.add_bos)
    info = info_from(
        model,
        source=source,
        kind="gguf",
        path=str(path),
        sha256=sha,
        architecture=type(model.original_model).__name__,
        original_architecture=header.architecture,
        quantization=header.quantization,
        chat_template=getattr(tokenizer, "chat_template", None) or header.chat_template,
        prepends_bos=bool(model.cfg.default_prepend_bos),
        converted_cache=str(converted),
        from_cache=was_cached,
    )
    return model, info


def _shapes_only(quantized: bool) -> Any:
    if not quantized:
        return contextlib.nullcontext()
    from mechlab.models.quantized import shapes_only

    return shapes_only()


def _load_quantized(path: Path, described: Path, header: gguf.GGUFHeader) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from mechlab.models import quantized
    from mechlab.models.hf import quiet_transformers

    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(described))
        tokenizer = AutoTokenizer.from_pretrained(str(described))
    return quantized.build(path, config, header.architecture), tokenizer
