"""Training data for toy models with an induction circuit: random tokens with a repeated stretch.

Each sequence starts with ``TOY_BOS`` and holds random tokens; a stretch of ``length`` tokens
starting at ``first`` reappears at ``second``. The loss is taken only where the next token is
predictable: inside the second copy, from its first token on (predicting the copy's 2nd…last
token). The model can lower that loss only by looking back at the first copy — by learning
induction heads.

``layout="random"`` draws ``length``, ``first`` and ``second`` anew for every sequence, so the only
reliable cue is the content (the current token's earlier occurrence): the model learns a
previous-token head in layer 0 and induction heads in layer 1. ``layout="fixed"`` always uses
``BOS, r, r`` with ``r`` of ``(seq_len - 1) // 2`` tokens: the repeat is always at the same offset,
so attention by position alone solves it — the negative control, a model that scores high on the
induction diagonal without an induction circuit.
"""

from typing import Literal, TypeAlias, get_args

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechlab.tokens import TOY_BOS
from mechlab.types import Tokens

Layout: TypeAlias = Literal["random", "fixed"]
LossMask: TypeAlias = Bool[Tensor, "batch target_pos"]


def _uniform_int(
    low: Int[Tensor, " batch"], high: Int[Tensor, " batch"], generator: torch.Generator
) -> Int[Tensor, " batch"]:
    """One integer per entry, uniform in ``[low, high]`` (inclusive)."""
    u = torch.rand(low.shape, generator=generator)
    return low + (u * (high - low + 1).float()).long().clamp(max=high - low)


def induction_batch(
    batch_size: int,
    *,
    seq_len: int,
    d_vocab: int,
    layout: str,
    min_repeat: int,
    generator: torch.Generator,
) -> tuple[Tokens, LossMask]:
    """Draw a training batch.

    Args:
        batch_size: sequences in the batch.
        seq_len: tokens per sequence, BOS included.
        d_vocab: vocabulary size; random tokens are ``1 .. d_vocab - 1`` (0 is BOS).
        layout: ``"random"`` (random length and offsets) or ``"fixed"`` (``BOS, r, r``).
        min_repeat: shortest repeated stretch in the random layout.
        generator: a CPU generator (the batch is a function of its state).

    Returns:
        ``(tokens [batch, seq_len], loss_mask [batch, seq_len - 1])``: ``loss_mask[b, p]`` says
        whether the prediction at position ``p`` (of token ``p + 1``) is scored.
    """
    if layout not in get_args(Layout):
        raise ValueError(f"layout must be one of {get_args(Layout)}; got {layout!r}.")
    tokens = torch.randint(1, d_vocab, (batch_size, seq_len), generator=generator)
    tokens[:, 0] = TOY_BOS
    longest = (seq_len - 1) // 2
    if layout == "fixed":
        length = torch.full((batch_size,), longest)
        first = torch.ones(batch_size, dtype=torch.long)
        second = first + length
    else:
        length = _uniform_int(
            torch.full((batch_size,), min_repeat), torch.full((batch_size,), longest), generator
        )
        first = _uniform_int(torch.ones(batch_size, dtype=torch.long), seq_len - 2 * length, generator)
        second = _uniform_int(first + length, seq_len - length, generator)
    position = torch.arange(seq_len).expand(batch_size, -1)
    in_copy = (position >= second[:, None]) & (position < (second + length)[:, None])
    source = torch.where(in_copy, position - second[:, None] + first[:, None], position)
    tokens = tokens.gather(1, source)
    target = position[:, 1:]
    loss_mask = (target > second[:, None]) & (target < (second + length)[:, None])
    return tokens, loss_mask
