"""A mechlab detector plugin: local-window heads, which attend to the last few positions.

Local heads spread their attention over the few tokens just before the current one; they build
n-gram features (the previous-token head is the one-token special case). The detector marks, for
every destination, the ``WINDOW`` positions before it; a head's score is the attention mass it puts
there (1 for a perfectly local head). mechlab supplies everything else: the random inputs, the
interval over sequences, the chance level and the verdicts.
"""

from typing import ClassVar, final

import torch

from mechlab.detectors import PatternDetector, Targets, Tokens

WINDOW = 3


@final
class LocalWindowDetector(PatternDetector):
    name: ClassVar[str] = "local-window"
    description: ClassVar[str] = f"attends within the {WINDOW} positions before the current one"
    threshold: ClassVar[float] = 0.6

    def expected_pattern(self, tokens: Tokens) -> Targets:
        n = tokens.shape[1]
        window = torch.ones(n, n, device=tokens.device).tril(-1).triu(-WINDOW)
        return window.expand(tokens.shape[0], n, n)
