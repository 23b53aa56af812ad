"""Occlusion: how much the target falls when one token is taken away.

For each position ``i`` the prompt is run with token ``i`` replaced (by ``"."``, or any other
token) or dropped, and the score is ``F(x) - F(x without token i)``. It needs no gradients and is
easy to explain, but it measures one token at a time: two tokens that each suffice on their own
(a name said twice) both score low. All variants of a prompt run batched.
"""

from typing import Literal, get_args

import torch
from torch import Tensor

from mechlab.attribution.integrated_gradients import DEFAULT_BATCH_SIZE, pad_token_id
from mechlab.attribution.result import Attribution
from mechlab.errors import InputError
from mechlab.targets import TargetSpec, prompt_target
from mechlab.tokens import as_tokens, single_token, str_tokens
from mechlab.types import HookedModel

OcclusionMode = Literal["replace", "drop"]


@torch.no_grad()
def occlusion(
    model: HookedModel,
    tokens: str | Tensor,
    target: TargetSpec,
    *,
    mode: OcclusionMode = "replace",
    replacement: str | int = ".",
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_first: bool = True,
) -> Attribution:
    """``F(x) - F(x with token i occluded)`` for every position ``i``.

    ``mode="replace"`` swaps token ``i`` for ``replacement`` (a token text or id, default ``"."``;
    ``"pad"`` for the pad token); ``"drop"``
    deletes it (the prompt gets one token shorter; the target must read the last position). With
    ``keep_first`` the first token (the attention sink) is never occluded and scores 0.
    """
    toks = as_tokens(model, tokens)
    goal = prompt_target(model, toks, target)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    if mode not in get_args(OcclusionMode):
        raise InputError(f"Unknown occlusion mode {mode!r}; choose 'replace' or 'drop'.")
    if mode == "drop" and (goal.pos != -1 or toks.shape[1] < 2):
        raise InputError("mode='drop' needs a target at the last position (pos=-1) and ≥ 2 tokens.")
    n = toks.shape[1]
    positions = torch.arange(int(keep_first), n)
    if mode == "replace":
        token_id = (
            pad_token_id(model)
            if replacement == "pad"
            else single_token(model, replacement, what="replacement")
        )
        variants = toks.repeat(len(positions), 1)
        variants[torch.arange(len(positions)), positions] = token_id
        detail = f"each token replaced by {token_id} ({str_tokens(model, torch.tensor([token_id]))[0]!r})"
    else:
        keep = torch.ones(len(positions), n, dtype=torch.bool, device=toks.device)
        keep[torch.arange(len(positions)), positions] = False
        variants = toks.repeat(len(positions), 1)[keep].view(len(positions), n - 1)
        detail = "each token dropped"
    value = float(goal(model(toks))[0])
    scores = torch.zeros(n)
    for i in range(0, len(positions), batch_size):
        chunk = positions[i : i + batch_size]
        scores[chunk] = value - goal(model(variants[i : i + batch_size])).float().cpu()
    return Attribution(
        method="occlusion",
        tokens=toks,
        str_tokens=str_tokens(model, toks),
        scores=scores,
        target=goal.label,
        value=value,
        baseline_value=None,
        baseline=mode,
        detail=f"Occlusion: {detail}; score = F(x) − F(occluded)."
        + (" First token kept." if keep_first else ""),
    )
