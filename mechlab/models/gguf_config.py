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

from collections.abc import Collection, Mapping, Sequence
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
# llama.cpp's per-dimension RoPE frequency divisors (Llama 3's scaling; Phi-3's long/short factors).
_ROPE_FACTOR_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def overrides(
    architecture: str, metadata: Mapping[str, Any], tensors: Collection[str], *, source: str
) -> dict[str, Any]:
    """Config fields for the converted model, as llama.cpp derives them from this file.

    Args:
        architecture: the file's ``general.architecture`` (llama.cpp's name).
        metadata: the file's metadata, key → value (``GGUFReader`` field contents).
        tensors: the names of the file's tensors.
        source: the file, for error messages.

    Returns:
        Attribute → value for the transformers config that transformers' loader builds; empty when
        its defaults already agree with llama.cpp.

    Raises:
        UnsupportedArchitectureError: the file asks for a RoPE scaling transformers cannot express.

    >>> overrides("qwen3", {"qwen3.attention.key_length": 64}, [], source="q.gguf")
    {'head_dim': 64}
    >>> overrides("gpt2", {"gpt2.context_length": 256}, [], source="g.gguf")
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
    n_layers = int(key("block_count"))
    n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    fields: dict[str, Any] = {
        # llama.cpp scales queries by 1/sqrt(head size), or 1/sqrt(n_embd / n_head) for the 27B models;
        # no metadata key carries the scale, so transformers' query_pre_attn_scalar (default 256) is set to it.
        "query_pre_attn_scalar": n_embd // n_head
        if n_layers == _GEMMA_27B_LAYERS[architecture]
        else head_dim,
        "layer_types": _layer_types(architecture, key, n_layers),
    }
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


def _rope(architecture: str, key: Any, tensors: Collection[str], *, source: str) -> dict[str, Any]:
    """RoPE bases and scaling the loader does not carry over (it reads only ``rope.freq_base``)."""
    base = float(key("rope.freq_base", 10000.0))
    scaling = str(key("rope.scaling.type", "none")).lower()
    factor = float(key("rope.scaling.factor") or key("rope.scale_linear") or 1.0)
    factor_tensors = sorted(t for t in _ROPE_FACTOR_TENSORS if t in tensors)
    if architecture == "gpt-oss":
        return {}  # the one architecture whose RoPE scaling transformers' loader reads
    if factor_tensors:
        raise UnsupportedArchitectureError(
            MSG_GGUF_ROPE_SCALING.format(
                path=source, arch=architecture, scaling=f"per-dimension RoPE factors ({', '.join(factor_tensors)})"
            )
        )
    scaled = scaling not in ("none", "linear") or (scaling == "linear" and factor != 1.0)
    if scaled and (architecture not in (*_PLAIN_ROPE, "gemma3") or scaling != "linear"):
        raise UnsupportedArchitectureError(
            MSG_GGUF_ROPE_SCALING.format(path=source, arch=architecture, scaling=f"{scaling} (factor {factor:g})")
        )
    rope = {"rope_type": "linear", "rope_theta": base, "factor": factor} if scaled else None
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
        raise UnsupportedArchitectureError(
            MSG_GGUF_ROPE_SCALING.format(
                path=source, arch=architecture, scaling="a separate RoPE base for sliding-window layers"
            )
        )
    return {"rope_parameters": rope} if rope else {}
