"""``ModelInfo``: what was loaded, from where, and how faithfully it stands for the original."""

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A record of a loaded model, kept beside it for reports and reproducibility.

    Attributes:
        source: the source string as given (``"smollm2"``, ``"ollama:smollm2:135m"``, a path…).
        kind: ``"gguf" | "hf" | "hub" | "toy"``.
        path: the file or directory the weights came from (``None`` for generated toys).
        sha256: sha256 of the GGUF file (``None`` for directories and toys).
        architecture: the Hugging Face / TransformerLens architecture class that was hooked.
        original_architecture: the architecture as the original file names it (GGUF ``llama``…).
        quantization: tensor counts per storage type in the original file, e.g. ``{"Q4_1": 210}``.
        n_layers, n_heads, n_kv_heads, d_model, d_head, d_vocab, n_ctx: model shape.
        chat_template: the Jinja chat template the model ships with, if any.
        prepends_bos: whether the model's own tokenizer (and so its runtime) prepends BOS.
        converted_cache: the directory of the converted safetensors copy, if one was used or made.
        from_cache: ``True`` when the converted copy already existed and conversion was skipped.
        load_seconds: wall time of ``load_model``.
        weights: the loading mode: ``float32``, ``bfloat16``, ``float16`` (the parameters' dtype) or
            ``quantized`` (a GGUF file's matrices kept in their blocks).
    """

    source: str
    kind: str
    path: str | None
    sha256: str | None
    architecture: str
    original_architecture: str | None
    quantization: dict[str, int]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    chat_template: str | None = None
    prepends_bos: bool = False
    converted_cache: str | None = None
    from_cache: bool = False
    load_seconds: float = 0.0
    weights: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def quantization_summary(self) -> str:
        """e.g. ``"Q4_1 ×210, F32 ×61, Q8_0 ×1"``, or ``"none"``."""
        if not self.quantization:
            return "none"
        items = sorted(self.quantization.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} ×{count}" for name, count in items)
