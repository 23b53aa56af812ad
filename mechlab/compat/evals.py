"""``transformer_lens.evals``: ``from mechlab.compat.evals import ...`` reads TransformerLens 4's
module of that name, which keeps 2.18's names."""

from typing import Any

import transformer_lens.evals as _evals


def __getattr__(name: str) -> Any:
    return getattr(_evals, name)


def __dir__() -> list[str]:
    return dir(_evals)
