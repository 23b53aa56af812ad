"""The built-in attention-pattern detectors.

Definitions follow TransformerLens' demos and ARENA 1.2. On repeated random tokens ``BOS, r, r``
with ``n = len(r)`` they reduce to diagonals of the pattern ``[dest, src]``: induction
``offset 1 - n``, duplicate-token ``offset -n``, previous-token ``offset -1``, current-token the main
diagonal, attention-sink column 0. Targets are derived from the tokens, so on any input the
induction targets of a destination are the positions right after earlier occurrences of its token.

Each class is registered under the entry-point group ``mechlab.detectors`` in mechlab's own
``pyproject.toml``, exactly as a third-party plugin registers its detectors.
"""

from typing import ClassVar, final

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechlab.detectors.base import PatternDetector, Targets
from mechlab.types import Tokens


def earlier_same_token(tokens: Tokens) -> Bool[Tensor, "batch q_pos k_pos"]:
    """``[b, q, k]`` is True where ``k < q`` and ``tokens[b, k] == tokens[b, q]``."""
    n = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)
    return same & earlier


def _fixed(tokens: Tokens, rows: Float[Tensor, "q_pos k_pos"]) -> Targets:
    return rows.to(device=tokens.device, dtype=torch.float32).expand(tokens.shape[0], -1, -1)


@final
class InductionDetector(PatternDetector):
    name: ClassVar[str] = "induction"
    description: ClassVar[str] = (
        "attends to the token right after an earlier occurrence of the current token "
        "(A B … A → B), the head that completes repeated sequences"
    )
    content_dependent: ClassVar[bool] = True

    def expected_pattern(self, tokens: Tokens) -> Targets:
        previous_occurrence = earlier_same_token(tokens)
        targets = torch.zeros(previous_occurrence.shape, dtype=torch.float32, device=tokens.device)
        targets[:, :, 1:] = previous_occurrence[:, :, :-1].float()
        return targets


@final
class DuplicateTokenDetector(PatternDetector):
    name: ClassVar[str] = "duplicate-token"
    description: ClassVar[str] = "attends to earlier occurrences of the current token"
    content_dependent: ClassVar[bool] = True

    def expected_pattern(self, tokens: Tokens) -> Targets:
        return earlier_same_token(tokens).float()


@final
class PreviousTokenDetector(PatternDetector):
    name: ClassVar[str] = "previous-token"
    description: ClassVar[str] = "attends to the position just before the current one"

    def expected_pattern(self, tokens: Tokens) -> Targets:
        n = tokens.shape[1]
        return _fixed(tokens, torch.ones(n, n).tril(-1).triu(-1))


@final
class CurrentTokenDetector(PatternDetector):
    name: ClassVar[str] = "current-token"
    description: ClassVar[str] = "attends to its own position (self-attention on the diagonal)"

    def expected_pattern(self, tokens: Tokens) -> Targets:
        rows = torch.eye(tokens.shape[1])
        rows[0, 0] = 0.0  # position 0 can attend only to itself: no evidence either way
        return _fixed(tokens, rows)


@final
class AttentionSinkDetector(PatternDetector):
    name: ClassVar[str] = "attention-sink"
    description: ClassVar[str] = "attends to the first token (BOS), the resting place of idle heads"
    threshold: ClassVar[float] = 0.5

    def expected_pattern(self, tokens: Tokens) -> Targets:
        rows = torch.zeros(tokens.shape[1], tokens.shape[1])
        rows[1:, 0] = 1.0
        return _fixed(tokens, rows)
