"""``transformer_lens.head_detector``: ``from mechlab.compat.head_detector import ...`` reads
TransformerLens 4's module of that name, which keeps 2.18's names."""

from typing import Any

import transformer_lens.head_detector as _head_detector


def __getattr__(name: str) -> Any:
    return getattr(_head_detector, name)


def __dir__() -> list[str]:
    return dir(_head_detector)
