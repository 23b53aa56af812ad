"""``toy:PRESET[,key=value…]`` / ``toy:DIR``: a small TransformerLens-native model
(``mechlab.toy.model``)."""

from pathlib import Path
from typing import Any

import torch

from mechlab.models.bridge import info_from
from mechlab.models.info import ModelInfo
from mechlab.models.sources.base import Source, Status
from mechlab.toy import model as toy


class ToySource(Source):
    scheme = "toy"
    forms = ("toy:PRESET | toy:DIR | toy:key=value,...   a small TransformerLens-native model",)
    # Ahead of the hf source, which claims every directory: a toy checkpoint is one too.
    priority = 40

    def claims(self, text: str) -> bool:
        path = Path(text).expanduser()
        return path.is_dir() and toy.is_checkpoint(path)

    def load(
        self, target: str, *, source: str, device: str | torch.device, dtype: torch.dtype, status: Status
    ) -> tuple[Any, ModelInfo]:
        return load_toy(source, target, device=device, dtype=dtype)


def load_toy(source: str, target: str, *, device: Any, dtype: torch.dtype) -> tuple[Any, ModelInfo]:
    from mechlab.models.hooked import adopt

    path = Path(target).expanduser()
    if target and toy.is_checkpoint(path):
        model, _ = toy.load_checkpoint(path, device=device, dtype=dtype)
        where: str | None = str(path)
    else:
        model = toy.build(toy.parse_spec(target), device=device, dtype=dtype)
        where = None
    model.enable_compatibility_mode(no_processing=True)
    model = adopt(model)
    info = info_from(
        model,
        source=source,
        kind="toy",
        path=where,
        sha256=None,
        architecture="TransformerLensNative",
        original_architecture=None,
        quantization={},
    )
    return model.eval(), info
