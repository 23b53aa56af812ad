"""What llama.cpp reads from a GGUF file's metadata that transformers' GGUF loader leaves at defaults.

transformers' loader maps a fixed table of metadata keys onto a config and leaves every other field
at the config class's default. For the checkpoints those defaults were written from that is harmless
(Gemma 2 9B's query scale is its head size, 256, the default); for any other file it is a silent
error: a Qwen3 file whose heads are not 128 wide, a Gemma 2 file with other soft-capping constants, a
Gemma 3 file whose sliding-window layers use another RoPE base, a GPT-2 file with a context other
than 1,024 positions. llama.cpp, the runtime operators run the file in, takes these values from the
file or from its own defaults, so the converted config gets the values llama.cpp uses. What
transformers cannot express (a RoPE scaling it has no equivalent for) is refused, never converted
into a model that differs from the file.

The rules follow llama.cpp's model loader (``src/llama-model.cpp`` and ``src/models/<arch>.cpp`` in
the llama.cpp vendored by llama-cpp-python 0.3.36); ``tests/integration/test_conformance.py`` checks
the result against llama.cpp itself for every architecture listed in the README's matrix.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mechlab.errors import MSG_GGUF_ROPE_SCALING, UnsupportedArchitectureError

# llama.cpp's sliding-window pattern when the file gives none: every n-th layer is global.
_DEFAULT_SWA_PATTERN = {"gemma2": 2, "gemma3": 6}
# llama.cpp's layer counts of the Gemma 27B models, whose query scale is n_embd / n_head
# (src/models/gemma2.cpp, gemma3.cpp, after gemma_pytorch's config).
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
# Architectures whose transformers config has a head_dim that the loader does not set from the file.
_HEAD_DIM_FROM_KEY_LENGTH = ("llama", "mistral", "qwen3")
# RoPE applied the same way in every layer (transformers: one ``rope_parameters`` dict).
_PLAIN_ROPE = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2")
# Architectures whose rope_freqs tensor is Llama 3's scaling (transformers' rope_type "llama3").
_LLAMA3_ROPE = ("llama", "mistral")
# llama.cpp's per-dimension RoPE frequency divisors (Llama 3's scaling; Phi-3's long/short factors).
_ROPE_FACTOR_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def overrides(
    architecture: str, metadata: Mapping[str, Any], tensors: Mapping[str, Any], *, source: str
) -> dict[str, Any]:
    """Config fields for the converted model, as llama.cpp derives them from this file.

    Args:
        architecture: the file's ``general.architecture`` (llama.cpp's name).
        metadata: the file's metadata, key → value (``GGUFReader`` field contents).
        tensors: the file's tensors, name → values (read only for RoPE factors, so a lazy
            mapping such as ``GGUFReader`` tensor data costs nothing).
        source: the file, for error messages.

    Returns:
        Attribute → value to set on the config transformers' loader builds (empty where the
        loader's key table covers everything llama.cpp reads, as for Qwen2).

    Raises:
        UnsupportedArchitectureError: the file asks for a RoPE scaling transformers cannot express.

    >>> overrides("qwen3", {"qwen3.attention.key_length": 64}, {}, source="q.gguf")
    {'head_dim': 64}
    >>> overrides("gpt2", {"gpt2.context_length": 256}, {}, source="g.gguf")
    {'n_positions': 256}
    """

    def key(name: str, default: Any = None) -> Any:
        value = metadata.get(f"{architecture}.{name}")
        return default if value is None else value

    fields: dict[str, Any] = {}
    if architecture in _HEAD_DIM_FROM_KEY_LENGTH and key("attention.key_length") is not None:
        fields["head_dim"] = int(key("attention.key_length"))
    if architecture == "gpt2" and key("context_length") is not None:
        fields["n_positions"] = int(key("context_length"))  # the loader sets n_ctx, unused by GPT2Model
    if architecture == "phi3":
        fields["sliding_window"] = None  # llama.cpp disables Phi-3's sliding window (src/models/phi3.cpp)
    if architecture in ("gemma2", "gemma3"):
        fields.update(_gemma(architecture, key))
    fields.update(_rope(architecture, key, tensors, source=source))
    return fields


def _gemma(architecture: str, key: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    n_layers, n_embd, n_head = key("block_count"), key("embedding_length"), key("attention.head_count")
    if n_layers and n_embd and n_head:
        head_dim = int(key("attention.key_length", n_embd // n_head))
        # llama.cpp scales queries by 1/sqrt(head size), or by 1/sqrt(n_embd / n_head) for the 27B
        # models; no metadata key carries the scale, and transformers' query_pre_attn_scalar
        # (default 256) is what it multiplies by, so it gets llama.cpp's value.
        big = int(n_layers) == _GEMMA_27B_LAYERS[architecture]
        fields["query_pre_attn_scalar"] = int(n_embd) // int(n_head) if big else head_dim
    if n_layers:
        fields["layer_types"] = _layer_types(architecture, key, int(n_layers))
    if architecture == "gemma2":
        fields["attn_logit_softcapping"] = float(key("attn_logit_softcapping", 50.0))
        fields["final_logit_softcapping"] = float(key("final_logit_softcapping", 30.0))
        fields["sliding_window"] = int(key("attention.sliding_window", 4096))
    else:
        softcap = key("final_logit_softcapping")
        fields["final_logit_softcapping"] = None if not softcap else float(softcap)
    return fields


def _layer_types(architecture: str, key: Any, n_layers: int) -> list[str]:
    """Which layers attend within the sliding window (llama.cpp's ``load_swa_pattern``)."""
    if architecture == "gemma3" and not key("attention.sliding_window"):
        return ["full_attention"] * n_layers  # no window in the file: llama.cpp's swa_type NONE
    pattern = key("attention.sliding_window_pattern", _DEFAULT_SWA_PATTERN[architecture])
    if isinstance(pattern, Sequence):
        sliding = [bool(flag) for flag in pattern][:n_layers]
    else:
        n = int(pattern)
        sliding = [n == 0 or layer % n < n - 1 for layer in range(n_layers)]
    return ["sliding_attention" if flag else "full_attention" for flag in sliding]


def _rope(architecture: str, key: Any, tensors: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """RoPE bases and scaling the loader does not carry over (it reads only ``rope.freq_base``)."""
    if architecture == "gpt-oss":
        return {}  # the one architecture whose RoPE scaling transformers' loader reads

    def refuse(scaling: str) -> UnsupportedArchitectureError:
        return UnsupportedArchitectureError(
            MSG_GGUF_ROPE_SCALING.format(path=source, arch=architecture, scaling=scaling)
        )

    base = float(key("rope.freq_base", 10000.0))
    scaling = str(key("rope.scaling.type", "none")).lower()
    factor = float(key("rope.scaling.factor") or key("rope.scale_linear") or 1.0)
    factor_tensors = sorted(t for t in _ROPE_FACTOR_TENSORS if t in tensors)
    rope: dict[str, Any] | None = None
    if factor_tensors == ["rope_freqs.weight"] and architecture in _LLAMA3_ROPE:
        dims = int(key("rope.dimension_count") or key("attention.key_length") or 0)
        rope = llama3_rope([float(f) for f in tensors["rope_freqs.weight"]], base, dims)
        if rope is None:
            raise refuse("per-dimension RoPE factors (rope_freqs.weight) that match no Llama 3 scaling")
    elif factor_tensors:
        raise refuse(f"per-dimension RoPE factors ({', '.join(factor_tensors)})")
    if scaling not in ("none", "linear") or (scaling == "linear" and factor != 1.0):
        if architecture not in (*_PLAIN_ROPE, "gemma3") or scaling != "linear" or rope is not None:
            raise refuse(f"{scaling} scaling (factor {factor:g})")
        rope = {"rope_type": "linear", "rope_theta": base, "factor": factor}
    if architecture == "gemma3":
        # Sliding-window layers use their own base and no scaling (llama.cpp: rope_freq_base_train_swa,
        # default 10000, and rope_freq_scale_train_swa, 1).
        swa_base = float(key("rope.freq_base_swa", 10000.0))
        return {
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": swa_base},
                "full_attention": rope or {"rope_type": "default", "rope_theta": base},
            }
        }
    if architecture == "gemma2" and key("rope.freq_base_swa") not in (None, base):
        raise refuse("a separate RoPE base for sliding-window layers")
    return {"rope_parameters": rope} if rope else {}


def llama3_rope(divisors: Sequence[float], base: float, dims: int) -> dict[str, Any] | None:
    """transformers' ``llama3`` RoPE parameters that reproduce llama.cpp's ``rope_freqs`` divisors.

    llama.cpp's converter stores Llama 3's scaling as one divisor per frequency (1 for short
    wavelengths, ``factor`` for long ones, interpolated between), not as the four numbers
    transformers takes. Between the bands ``1 / r = (1 - s) / factor + s`` with
    ``s = (L / wavelength - low) / (high - low)``, linear in ``1 / wavelength``: two or more
    frequencies in that band give its slope and offset, hence ``L / (high - low)`` and
    ``low / (high - low)``, which fix the result (with ``low`` = 1, Llama 3's choice, the other two
    follow). The parameters found are checked by recomputing every divisor; None if they do not
    reproduce them (or too few frequencies fall between the bands to find them).

    >>> divisors = [1.0, 1.0, 1.29398, 2.76517, 7.66739, 8.0, 8.0, 8.0]  # factor 8, L = 64, base 100
    >>> params = llama3_rope(divisors, 100.0, 16)
    >>> params["original_max_position_embeddings"], round(params["high_freq_factor"], 3)
    (64, 4.0)
    """
    if dims != 2 * len(divisors) or not divisors:
        return None
    wavelengths = [2 * math.pi * base ** (2 * i / dims) for i in range(len(divisors))]
    factor = max(divisors)
    if factor <= 1.0:
        return None
    band = [
        (1 / w, (1 / r - 1 / factor) / (1 - 1 / factor))
        for w, r in zip(wavelengths, divisors, strict=True)
        if 1 + 1e-5 < r < factor * (1 - 1e-5)
    ]
    if len(band) < 2:
        return None
    n = len(band)
    mean_x, mean_s = sum(x for x, _ in band) / n, sum(y for _, y in band) / n
    slope = sum((x - mean_x) * (y - mean_s) for x, y in band) / sum((x - mean_x) ** 2 for x, _ in band)
    offset = slope * mean_x - mean_s  # s = slope / wavelength - offset
    if slope <= 0 or offset <= 0:
        return None
    original = slope / offset  # L, with low = 1
    if abs(original - round(original)) < 1e-3 * original:
        original = round(original)
    params = {
        "rope_type": "llama3",
        "rope_theta": base,
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": round(1.0 + 1.0 / offset, 6),
        "original_max_position_embeddings": original,
    }
    expected = _llama3_divisors(params, wavelengths)
    if any(abs(a - b) > 1e-4 * b for a, b in zip(expected, divisors, strict=True)):
        return None
    return params


def _llama3_divisors(params: Mapping[str, Any], wavelengths: Sequence[float]) -> list[float]:
    """transformers' ``_compute_llama3_parameters``, as divisors of the default frequencies."""
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    original = params["original_max_position_embeddings"]
    divisors = []
    for wavelength in wavelengths:
        if wavelength < original / high:
            divisors.append(1.0)
        elif wavelength > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return divisors
