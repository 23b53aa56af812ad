"""Toy models: small TransformerLens-native transformers, built from a config or a checkpoint.

Source forms::

    toy:attn-only-2l                 a preset (see PRESETS), randomly initialised with seed 0
    toy:attn-only-2l,seed=3,d_vocab=32   a preset with overrides
    toy:n_layers=1,d_model=16,...    a config from scratch (keys of TransformerBridgeConfig)
    toy:DIR                          a checkpoint directory written by ``save_toy``

A checkpoint directory holds ``toy_config.json`` (the config dict) and ``model.safetensors``.
Toy models have no tokenizer: they take token ids.
"""

import json
from pathlib import Path
from typing import Any

import torch

from mechlab.errors import CorruptModelError, SourceError

CONFIG_FILE = "toy_config.json"
WEIGHTS_FILE = "model.safetensors"
PRESETS: dict[str, dict[str, Any]] = {
    # The attention-only 2-layer model of the induction-head literature, at CPU-trainable size.
    "attn-only-2l": dict(
        n_layers=2,
        d_model=64,
        n_heads=4,
        d_head=16,
        d_vocab=64,
        n_ctx=64,
        attn_only=True,
        normalization_type="LN",
        act_fn="gelu",
    ),
    # A 2-layer model with MLPs, for tests that need every site kind.
    "tiny": dict(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=50,
        n_ctx=32,
        attn_only=False,
        normalization_type="LN",
        act_fn="gelu",
    ),
    # Like "tiny" with grouped-query attention (2 key/value heads for 4 query heads).
    "tiny-gqa": dict(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=50,
        n_ctx=32,
        attn_only=False,
        normalization_type="LN",
        act_fn="gelu",
        n_key_value_heads=2,
    ),
}


def _coerce(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_spec(spec: str) -> dict[str, Any]:
    """Turn ``preset[,key=value...]`` or ``key=value,...`` into a config dict (seed defaults to 0)."""
    config: dict[str, Any] = {}
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        if "=" in part:
            key, _, value = part.partition("=")
            config[key.strip()] = _coerce(value.strip())
        elif i == 0 and part in PRESETS:
            config.update(PRESETS[part])
        else:
            raise SourceError(
                f"Unknown toy preset or malformed setting {part!r} in 'toy:{spec}'. Presets: "
                f"{', '.join(PRESETS)}; settings are key=value (e.g. toy:attn-only-2l,seed=1), "
                "or toy:DIR for a saved checkpoint."
            )
    if not config or not {"n_layers", "d_model"} <= config.keys():
        raise SourceError(
            f"toy:{spec} does not define a model: start from a preset ({', '.join(PRESETS)}) or give "
            "at least n_layers, d_model, n_heads, d_head, d_vocab, n_ctx."
        )
    config.setdefault("seed", 0)
    return config


def build(config: dict[str, Any], *, device: str | torch.device, dtype: torch.dtype) -> Any:
    """A TransformerLens-native bridge for ``config`` (not yet in compatibility mode)."""
    import transformer_lens.model_bridge.sources.native as native

    try:
        return native.boot(dict(config), device=device, dtype=dtype, model_name="toy")
    except (TypeError, ValueError) as error:
        raise SourceError(f"Invalid toy config {config}: {error}") from error


def save_toy(model: Any, config: dict[str, Any], directory: Path) -> None:
    """Save a toy model's weights and config so ``toy:DIR`` loads it again."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    save_model(model.original_model, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def is_checkpoint(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def load_checkpoint(
    directory: Path, *, device: str | torch.device, dtype: torch.dtype
) -> tuple[Any, dict[str, Any]]:
    """Load a directory written by ``save_toy``; returns ``(bridge, config)``."""
    from safetensors.torch import load_model

    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        model = build(config, device="cpu", dtype=torch.float32)
        load_model(model.original_model, str(directory / WEIGHTS_FILE))
    except (OSError, ValueError, RuntimeError) as error:
        raise CorruptModelError(f"Cannot load toy checkpoint {directory}: {error}") from error
    return model.to(device=device, dtype=dtype), config
