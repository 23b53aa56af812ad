"""``transformer_lens.patching``: ``from mechlab.compat.patching import ...`` reads TransformerLens 4's
module of that name, which keeps 2.18's names."""

from typing import Any

import transformer_lens.patching as _patching


def __getattr__(name: str) -> Any:
    return getattr(_patching, name)


def __dir__() -> list[str]:
    return dir(_patching)
