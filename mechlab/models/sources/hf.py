"""Hugging Face checkpoints: ``DIR`` / ``hf:DIR`` (a local directory, offline) and ``ORG/NAME`` /
``hf:ORG/NAME`` (a Hub name, from the local HF cache or the Hub; TransformerLens names such as
``gpt2-small`` are looked up as their Hub names)."""

import re
from pathlib import Path
from typing import Any

import torch

from mechlab.models import hf
from mechlab.models.bridge import info_from, wrap_hf_model
from mechlab.models.info import ModelInfo
from mechlab.models.sources.base import Resolved, Source, Status, looks_like_path, missing

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class HFSource(Source):
    scheme = "hf"
    forms = (
        "DIR | hf:DIR                a local Hugging Face directory with config.json + weights",
        "hf:ORG/NAME | ORG/NAME      a Hugging Face Hub name (needs the Hub or a local HF cache)",
    )

    def claims(self, text: str) -> bool:
        path = Path(text).expanduser()
        return path.is_dir()

    def resolve(self, rest: str) -> Resolved:
        path = Path(rest).expanduser()
        if path.exists():
            return Resolved("hf", rest)
        if looks_like_path(rest):
            raise missing(f"hf:{rest}", path)
        return Resolved("hub", hf.official_name(rest))

    def load(
        self, target: str, *, source: str, device: str | torch.device, dtype: torch.dtype, status: Status
    ) -> tuple[Any, ModelInfo]:
        return load_hf(source, "hf", target, device=device, dtype=dtype, say=status)


class HubSource(Source):
    scheme = "hub"
    forms = ("gpt2-small, pythia-70m, ... a TransformerLens model name (looked up as its Hub name)",)
    priority = 90  # any name-like string: the fallback

    def claims(self, text: str) -> bool:
        return not looks_like_path(text) and bool(_HUB_NAME.match(text))

    def resolve(self, rest: str) -> Resolved:
        return Resolved("hub", hf.official_name(rest))

    def load(
        self, target: str, *, source: str, device: str | torch.device, dtype: torch.dtype, status: Status
    ) -> tuple[Any, ModelInfo]:
        return load_hf(source, "hub", target, device=device, dtype=dtype, say=status)


def load_hf(
    source: str, kind: str, target: str, *, device: Any, dtype: torch.dtype, say: Status
) -> tuple[Any, ModelInfo]:
    say(f"loading {target}")
    if kind == "hf":
        hf_model, tokenizer = hf.load_dir(Path(target).expanduser(), dtype=torch.float32)
    else:
        requested = source.strip().removeprefix("hf:")
        hf_model, tokenizer = hf.load_hub(target, dtype=torch.float32, requested=requested)
    model = wrap_hf_model(hf_model, tokenizer, device=device, dtype=dtype)
    info = info_from(
        model,
        source=source,
        kind=kind,
        path=target,
        sha256=None,
        architecture=type(model.original_model).__name__,
        original_architecture=getattr(hf_model.config, "model_type", None),
        quantization=hf.storage_dtypes(Path(target).expanduser()) if kind == "hf" else {},
        chat_template=getattr(tokenizer, "chat_template", None),
        prepends_bos=bool(model.cfg.default_prepend_bos) if tokenizer is not None else False,
    )
    return model, info
