"""Seeded tiny Llama checkpoints saved as Hugging Face directories (the shape every test uses)."""

from pathlib import Path
from typing import Any

import torch


def save_tiny_llama(directory: Path, *, vocab_size: int, seed: int = 0, **config: Any) -> Path:
    """A Llama with 4 heads (2 key/value heads) of width 8, MLP 64, ``config`` overriding the rest,
    initialised from ``seed`` and saved to ``directory``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32,
        **config,
    }
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **settings))
    model.save_pretrained(directory)
    return directory
