"""mechlab: mechanistic interpretability for the model you actually run.

Load a GGUF file, an Ollama model, a Hugging Face checkpoint or a toy model as a TransformerLens
hooked model, then cache, patch, attribute and explain. Everything speaks the HookedTransformer
protocol: hook names like ``blocks.3.attn.hook_z``, ``run_with_cache``, ``run_with_hooks``.

    >>> import mechlab, torch
    >>> model, tokenizer, info = mechlab.load_model("toy:tiny")
    >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
    >>> tuple(cache[mechlab.Site("z", 1).hook_name].shape)
    (1, 3, 4, 8)
"""

from mechlab.errors import (
    BundledModelMissingError,
    CorruptModelError,
    HookError,
    HubUnreachableError,
    InputError,
    MechlabError,
    ModelNotFoundError,
    OllamaModelNotFoundError,
    SiteError,
    SourceError,
    UnsupportedArchitectureError,
    VerificationError,
)
from mechlab.generation import Completion, encode_prompt, generate, next_token_alternatives
from mechlab.interventions.hooks import active_hook_count, hooked
from mechlab.models.cache import cache_dir
from mechlab.models.info import ModelInfo
from mechlab.models.load import LoadedModel, load_model
from mechlab.models.toy import save_toy
from mechlab.models.verify import VerifyReport, verify
from mechlab.sites import Site, head_sites, layer_sites
from mechlab.types import HookedModel

__version__ = "0.1.0"

__all__ = [
    "BundledModelMissingError",
    "Completion",
    "CorruptModelError",
    "HookError",
    "HookedModel",
    "HubUnreachableError",
    "InputError",
    "LoadedModel",
    "MechlabError",
    "ModelInfo",
    "ModelNotFoundError",
    "OllamaModelNotFoundError",
    "Site",
    "SiteError",
    "SourceError",
    "UnsupportedArchitectureError",
    "VerificationError",
    "VerifyReport",
    "active_hook_count",
    "cache_dir",
    "encode_prompt",
    "generate",
    "head_sites",
    "hooked",
    "layer_sites",
    "load_model",
    "next_token_alternatives",
    "save_toy",
    "verify",
]
