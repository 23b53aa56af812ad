"""Models for the compat tests: small models whose norms have learned (non-unit) weights.

A freshly initialised model has norm weights of 1 and biases of 0, which would hide every mistake
about norms (folding, ``apply_ln_to_stack``): the models here draw them at random, seeded.
"""

from pathlib import Path
from typing import Any

import torch

import mechlab
from mechlab.compat import HookedTransformer


def randomise_norms(model: Any, seed: int = 0) -> Any:
    """Give every norm of a loaded bridge a weight in [0.5, 1.5] (and a bias in [-0.2, 0.2] where it
    has one), and the unembedding a bias if it has a slot; in place, seeded."""
    generator = torch.Generator().manual_seed(seed)
    norms = [model.ln_final] + [n for block in model.blocks for n in (block.ln1, getattr(block, "ln2", None))]
    with torch.no_grad():
        for norm in norms:
            weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
            if isinstance(weight, torch.Tensor):
                weight.copy_(0.5 + torch.rand(weight.shape, generator=generator))
            if isinstance(bias, torch.Tensor):
                bias.copy_(0.4 * torch.rand(bias.shape, generator=generator) - 0.2)
        b_u = getattr(model.unembed, "b_U", None)
        if isinstance(b_u, torch.Tensor):
            b_u.copy_(0.5 * torch.randn(b_u.shape, generator=generator))
    return model


def save_llama(directory: Path, *, tied: bool, seed: int = 0) -> Path:
    """A seeded 2-layer Llama (4 query heads sharing 2 key/value heads, RMSNorm with random weights,
    vocabulary 50), saved as a Hugging Face directory; ``tied`` ties the unembedding to the embedding
    as SmolLM2 does."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        initializer_range=0.1,
        tie_word_embeddings=tied,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.copy_(0.5 + torch.rand(param.shape))
    model.save_pretrained(directory)
    return directory


def toy(spec: str, seed: int = 0) -> Any:
    """A toy model from ``mechlab.load_model`` with random norm weights and biases (processing off)."""
    return randomise_norms(mechlab.load_model(f"toy:{spec}").model, seed)


def compat_toy(spec: str, seed: int = 0, **options: Any) -> HookedTransformer:
    """``toy(spec)`` made a ``HookedTransformer`` (HookedTransformer's default processing unless
    ``options`` say otherwise)."""
    return HookedTransformer.from_bridge(toy(spec, seed), **options)
