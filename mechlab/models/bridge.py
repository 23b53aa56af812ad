"""Wrapping a transformers causal LM in a TransformerLens 4 ``TransformerBridge`` (compatibility mode).

The bridge exposes HookedTransformer hook names, ``run_with_cache``, ``run_with_hooks`` and
``ActivationCache`` with the weights exactly as the original model has them
(``enable_compatibility_mode(no_processing=True)``: no LayerNorm folding or centring), so logits match
the source model. Every source that loads a transformers model ends here. The bridge is made a
``mechlab.models.hooked.HookedBridge``, whose caches apply the norms' weights (which are not folded).
"""

from typing import Any

import torch

from mechlab.errors import MSG_UNSUPPORTED_TL_ARCH, UnsupportedArchitectureError
from mechlab.models import gguf
from mechlab.models.info import ModelInfo


def wrap_hf_model(
    hf_model: Any,
    tokenizer: Any,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    prepend_bos: bool | None = None,
) -> Any:
    """Wrap a loaded transformers causal LM in a TransformerBridge in compatibility mode.

    ``prepend_bos=None`` keeps whatever the tokenizer does by itself.
    """
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    from mechlab.models.hooked import adopt

    architecture = type(hf_model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            MSG_UNSUPPORTED_TL_ARCH.format(
                arch=architecture,
                tl_version=gguf.transformer_lens_version(),
                supported=", ".join(sorted(a for a in SUPPORTED_ARCHITECTURES if "CausalLM" in a)),
            )
        )
    gguf.strip_quantization(hf_model)
    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    bridge = build_bridge_from_module(
        hf_model, architecture, hf_config=hf_model.config, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.enable_compatibility_mode(no_processing=True)
    if tokenizer is not None:
        bridge.cfg.default_prepend_bos = (
            bool(bridge.cfg.tokenizer_prepends_bos) if prepend_bos is None else prepend_bos
        )
    return adopt(bridge).eval()


def info_from(model: Any, **fields: Any) -> ModelInfo:
    cfg = model.cfg
    return ModelInfo(
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        **fields,
    )
