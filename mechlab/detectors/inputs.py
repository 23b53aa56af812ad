"""Inputs for detectors: repeated random tokens, and the control with the repeat broken.

``repeated_tokens(model, n_seqs)`` draws sequences ``BOS, r, r``: ``seq_len`` distinct random token
ids ``r`` (distinct, so the only repeats are the intended ones), then ``r`` again.
``shuffle_second_copy`` permutes the second copy of each sequence with no token left in place (a
random derangement): the same tokens, repeated, but no longer in the same order — a head that
attends by content follows the tokens, a head that attends by position does not notice. A token
left in place would sit exactly where the unshuffled repeat put it, and a content head would score
there as if by position.

BOS is explicit: models whose tokenizer does not prepend it (SmolLM2) get it all the same, so every
model sees the same layout. ``default_bos`` picks the tokenizer's BOS id, or ``TOY_BOS`` for
tokenizer-less toy models (whose trainer uses the same id).
"""

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.errors import InputError
from mechlab.tokens import TOY_BOS
from mechlab.types import HookedModel, Tokens

DEFAULT_SEQ_LEN = 50


def default_bos(model: HookedModel) -> int:
    """The BOS id detector inputs start with: the tokenizer's ``bos_token_id``, ``TOY_BOS`` without
    a tokenizer.

    Raises:
        InputError: the tokenizer defines no BOS token (pass ``bos=`` explicitly).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return TOY_BOS
    bos = tokenizer.bos_token_id
    if bos is None:
        raise InputError(
            "The model's tokenizer defines no BOS token, and detector inputs start with one. Pass "
            "bos=ID explicitly (e.g. the id of the token your runtime starts documents with)."
        )
    return int(bos)


def sampling_vocab(model: HookedModel, bos: int) -> Int[Tensor, " vocab"]:
    """Token ids random tokens are drawn from: the vocabulary without BOS and special tokens."""
    excluded = {bos}
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        excluded.update(int(i) for i in tokenizer.all_special_ids)
    keep = torch.ones(int(model.cfg.d_vocab), dtype=torch.bool)
    keep[sorted(i for i in excluded if 0 <= i < keep.numel())] = False
    return keep.nonzero().flatten()


def repeated_tokens(
    model: HookedModel,
    n_seqs: int,
    *,
    seq_len: int | None = None,
    seed: int = 0,
    bos: int | None = None,
) -> Tokens:
    """Detector inputs for ``model``: ``n_seqs`` sequences ``BOS, r, r`` on the model's device.

    Args:
        model: the model (its tokenizer gives BOS and the special tokens to avoid).
        n_seqs: number of sequences.
        seq_len: length ``n`` of ``r`` (default ``min(50, (n_ctx - 1) // 2)``).
        seed: seed of the draw.
        bos: first token (default ``default_bos(model)``).

    Returns:
        ``[n_seqs, 2 * seq_len + 1]`` token ids.
    """
    seq_len = default_seq_len(model) if seq_len is None else seq_len
    check_fits(model, seq_len)
    bos = default_bos(model) if bos is None else bos
    generator = torch.Generator().manual_seed(seed)
    tokens = draw_repeated(n_seqs, seq_len, vocab=sampling_vocab(model, bos), bos=bos, generator=generator)
    return tokens.to(model_device(model))


def default_seq_len(model: HookedModel) -> int:
    """``min(50, (n_ctx - 1) // 2)``: the longest block that fits twice after BOS, capped at 50."""
    return min(DEFAULT_SEQ_LEN, (int(model.cfg.n_ctx) - 1) // 2)


def draw_repeated(
    n_seqs: int,
    seq_len: int,
    *,
    vocab: torch.Tensor | Sequence[int],
    bos: int,
    generator: torch.Generator,
) -> Tokens:
    """``n_seqs`` sequences ``BOS, r, r`` with ``r`` = ``seq_len`` distinct ids drawn from ``vocab``.

    Args:
        n_seqs: number of sequences (batch).
        seq_len: length ``n`` of the random block; each sequence has ``2 * n + 1`` tokens.
        vocab: the ids to draw from (``sampling_vocab``).
        bos: the first token of every sequence.
        generator: a CPU generator; the same generator state gives the same tokens.

    Returns:
        ``[n_seqs, 2 * seq_len + 1]`` token ids (CPU).
    """
    ids = torch.as_tensor(vocab, dtype=torch.long)
    if not 1 <= seq_len <= ids.numel():
        raise InputError(
            f"seq_len must be between 1 and the {ids.numel()} tokens available to draw distinct "
            f"random tokens from; got {seq_len}."
        )
    if n_seqs < 1:
        raise InputError(f"n_seqs must be at least 1; got {n_seqs}.")
    picks = torch.rand(n_seqs, ids.numel(), generator=generator).argsort(dim=-1)[:, :seq_len]
    block = ids[picks]
    first = torch.full((n_seqs, 1), bos, dtype=torch.long)
    return torch.cat([first, block, block], dim=1)


def shuffle_second_copy(tokens: Tokens, *, generator: torch.Generator) -> Tokens:
    """A copy of ``BOS, r, r`` sequences with each second copy of ``r`` randomly permuted so that no
    token stays at its position (a uniform random derangement per sequence).

    Raises:
        InputError: the sequences are not ``BOS + r + r`` (odd length, ``len(r) >= 2``).
    """
    n = (tokens.shape[1] - 1) // 2
    if tokens.shape[1] != 2 * n + 1 or n < 2:
        raise InputError(
            f"Expected BOS + r + r sequences with len(r) >= 2 (odd length >= 5); got length "
            f"{tokens.shape[1]}. Build them with mechlab.repeated_tokens(model, n_seqs, seq_len=n)."
        )
    order = derangements(tokens.shape[0], n, generator=generator)
    control = tokens.clone()
    control[:, n + 1 :] = tokens[:, n + 1 :].gather(1, order.to(tokens.device))
    return control


def derangements(n_rows: int, n: int, *, generator: torch.Generator) -> Int[Tensor, "row n"]:
    """``n_rows`` uniform random permutations of ``0..n-1`` with no fixed point (``n >= 2``)."""
    order = torch.rand(n_rows, n, generator=generator).argsort(dim=-1)
    identity = torch.arange(n)
    redraw = (order == identity).any(-1)
    while redraw.any():  # rejection: each draw succeeds with probability ~1/e
        order[redraw] = torch.rand(int(redraw.sum()), n, generator=generator).argsort(dim=-1)
        redraw = (order == identity).any(-1)
    return order


def check_fits(model: HookedModel, seq_len: int) -> None:
    """Raise InputError if ``BOS + 2 * seq_len`` tokens exceed the model's context."""
    n_ctx = int(model.cfg.n_ctx)
    if 2 * seq_len + 1 > n_ctx:
        raise InputError(
            f"seq_len={seq_len} makes sequences of {2 * seq_len + 1} tokens (BOS + two copies), "
            f"longer than the model's context of {n_ctx}. Use seq_len <= {(n_ctx - 1) // 2}."
        )


def model_device(model: Any) -> torch.device:
    """The device the model's parameters live on."""
    return next(model.parameters()).device
