"""Inputs shared by every intervention: prompts as tokens, clean/corrupted pairs, ablation sources.

Patching swaps activations position by position, so a clean and a corrupted input must tokenize to
the same shape. When they do not, the error shows both tokenizations side by side from the first
position where they part, which is almost always a name or word that splits into several tokens.

The corrupted side may instead be an ``Ablation`` (zero or mean activations). Only the clean run can
be ablated, so with an ablation the direction defaults to ``"noise"``; with a prompt, to
``"denoise"``.
"""

import dataclasses
from typing import Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.errors import MSG_LENGTH_MISMATCH, InputError
from mechlab.tokens import TokensLike, batch_tokens
from mechlab.types import HookedModel, Tokens

Direction = Literal["denoise", "noise"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)
AblationKind = Literal["zero", "mean"]


@dataclasses.dataclass(frozen=True)
class Ablation:
    """A corrupted *source* that is not a prompt: every patched activation is replaced by zero
    (``"zero"``) or by its mean over the clean run's prompts and positions (``"mean"``).

    With an ablation, only ``direction="noise"`` makes sense (the clean run is the one patched; it is
    the default), and results have no corrupted baseline, so they report effects rather than
    normalized effects.
    """

    kind: AblationKind = "zero"

    def __post_init__(self) -> None:
        if self.kind not in get_args(AblationKind):
            raise ValueError(f"Ablation kind must be one of {get_args(AblationKind)}, got {self.kind!r}.")

    def source(self, act: Float[Tensor, "batch ..."], pos_axis: int = 1) -> Float[Tensor, "batch ..."]:
        """The ablated value of an activation ``[batch, ...]`` whose (query) positions lie on
        ``pos_axis`` (``site.pos_axis``: 2 for attention patterns); a new tensor."""
        if self.kind == "zero":
            return torch.zeros_like(act)
        return act.mean(dim=(0, pos_axis), keepdim=True).expand_as(act).clone()


def pos_labels(model: HookedModel, row: Tensor) -> list[str]:
    """Per-position labels of one prompt: its token strings, or the ids when there is no tokenizer."""
    if getattr(model, "tokenizer", None) is None:
        return [str(int(t)) for t in row]
    return [str(piece) for piece in model.to_str_tokens(row)]  # type: ignore[attr-defined]


def alignment_hint(model: HookedModel, clean: Tensor, corrupted: Tensor) -> str:
    """Both first prompts' tokens side by side, from a little before where they first differ."""
    a, b = pos_labels(model, clean[0]), pos_labels(model, corrupted[0])
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, first - 2)
    rows = [f"  {'pos':>4}  {'clean':<16} corrupted"]
    for i in range(start, min(max(len(a), len(b)), start + 8)):
        left = repr(a[i]) if i < len(a) else "-"
        right = repr(b[i]) if i < len(b) else "-"
        mark = "  <- differs" if left != right else ""
        rows.append(f"  {i:>4}  {left:<16} {right}{mark}")
    return f"The tokens first differ at position {first}:\n" + "\n".join(rows)


def check_pair(model: HookedModel, clean: TokensLike, corrupted: TokensLike) -> tuple[Tokens, Tokens]:
    """Tokenize a clean/corrupted pair and check they have the same shape.

    Raises:
        InputError: different shapes, with an aligned view of the tokens and how to fix it.
    """
    clean_tokens, corrupted_tokens = batch_tokens(model, clean), batch_tokens(model, corrupted)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise InputError(
            MSG_LENGTH_MISMATCH.format(
                clean_shape=tuple(clean_tokens.shape),
                corrupted_shape=tuple(corrupted_tokens.shape),
                alignment=alignment_hint(model, clean_tokens, corrupted_tokens),
            )
        )
    return clean_tokens, corrupted_tokens


def check_direction(direction: str | None, ablation: bool) -> Direction:
    """The direction to use: ``direction``, or by default ``"noise"`` for an ablation and
    ``"denoise"`` otherwise.

    Raises:
        InputError: an unknown direction, or denoising from an ablation.
    """
    if direction is None:
        return "noise" if ablation else "denoise"
    if direction not in DIRECTIONS:
        raise InputError(
            f"direction must be one of {DIRECTIONS}, got {direction!r}: 'denoise' patches clean "
            "activations into the corrupted run, 'noise' patches corrupted ones into the clean run."
        )
    if ablation and direction != "noise":
        raise InputError(
            "An Ablation replaces clean activations, so it needs direction='noise' "
            "(denoising would patch ablated values into an ablated run); leave direction unset."
        )
    return "noise" if direction == "noise" else "denoise"


def split_pair(
    model: HookedModel, clean: TokensLike, corrupted: "TokensLike | Ablation", direction: str | None
) -> tuple[Tokens, Tokens | None, Ablation | None, Direction]:
    """Tokens of both runs (``None`` for an ablation), checked for shape, and the direction to use."""
    if isinstance(corrupted, Ablation):
        return batch_tokens(model, clean), None, corrupted, check_direction(direction, True)
    checked = check_direction(direction, False)
    clean_tokens, corrupted_tokens = check_pair(model, clean, corrupted)
    return clean_tokens, corrupted_tokens, None, checked


def shared_prefix(clean: Tokens, corrupted: Tokens) -> int:
    """How many leading positions every clean/corrupted pair has in common."""
    differs = (clean != corrupted).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else int(clean.shape[1])
