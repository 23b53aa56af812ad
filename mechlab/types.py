"""Tensor aliases and the model protocol every mechlab function speaks.

Axis names follow TransformerLens: ``batch pos d_model head d_head d_vocab layer q_pos k_pos``.
Run the tests with jaxtyping's runtime checks to have these annotations enforced.

mechlab is written against the *HookedTransformer protocol* (``HookedModel`` below), not one class:
TransformerLens 4's ``TransformerBridge`` in compatibility mode satisfies it, and so does any object
with the same hook names, ``run_with_cache``, ``run_with_hooks`` and ``hooks``.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeAlias, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor

Tokens: TypeAlias = Int[Tensor, "batch pos"]
TokenSeq: TypeAlias = Int[Tensor, " pos"]
Logits: TypeAlias = Float[Tensor, "batch pos d_vocab"]
LastLogits: TypeAlias = Float[Tensor, "batch d_vocab"]
Resid: TypeAlias = Float[Tensor, "batch pos d_model"]
HeadActs: TypeAlias = Float[Tensor, "batch pos head d_head"]
Pattern: TypeAlias = Float[Tensor, "batch head q_pos k_pos"]
HeadScores: TypeAlias = Float[Tensor, "layer head"]
LayerScores: TypeAlias = Float[Tensor, " layer"]
PerBatch: TypeAlias = Float[Tensor, " batch"]

HookFn: TypeAlias = Callable[..., Tensor | None]


@runtime_checkable
class HookedModel(Protocol):
    """What mechlab needs from a model: the HookedTransformer surface.

    ``cfg`` carries ``n_layers, n_heads, d_model, d_head, d_vocab, n_ctx`` (and
    ``n_key_value_heads`` for grouped-query attention); hook points are named as in
    HookedTransformer (``blocks.{layer}.attn.hook_z`` …).
    """

    @property
    def cfg(self) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, *args: Any, **kwargs: Any) -> AbstractContextManager[Any]: ...

    def to_tokens(self, *args: Any, **kwargs: Any) -> Tensor: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...
