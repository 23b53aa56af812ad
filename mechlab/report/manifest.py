"""The reproducibility manifest of an explanation: versions, platform, model, settings, timings."""

import dataclasses
import datetime
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from mechlab.models.info import ModelInfo
from mechlab.types import HookedModel

_DETECTOR_SOURCES = sorted((Path(__file__).resolve().parent.parent / "detectors").glob("*.py"))
PACKAGES: tuple[str, ...] = ("mechlab", "torch", "transformer-lens", "transformers", "gguf", "circuitsvis")


def versions() -> dict[str, str]:
    """Installed versions of the packages that determine the numbers."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def manifest(
    model: HookedModel, info: ModelInfo | None, settings: Any, timings: dict[str, float]
) -> dict[str, Any]:
    """Everything needed to rerun an explanation and get the same numbers."""
    cfg = model.cfg
    model_part: dict[str, Any] = {"device": str(cfg.device), "dtype": str(cfg.dtype).removeprefix("torch.")}
    if info is not None:
        keep = ("source", "kind", "path", "sha256", "architecture", "original_architecture", "quantization")
        model_part.update({key: getattr(info, key) for key in keep})
        model_part["shape"] = (
            f"{info.n_layers} layers × {info.n_heads} heads ({info.n_kv_heads} KV), d_model {info.d_model}"
        )
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": model_part,
        "settings": dataclasses.asdict(settings),
        "versions": versions(),
        "platform": platform.platform(),
        "timings_s": timings,
    }
