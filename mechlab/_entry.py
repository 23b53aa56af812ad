"""``mechlab.explain``: one name for the one-call report and for the methods' package."""

import importlib
from typing import Any


class ExplainEntry:
    """``mechlab.explain``: calling it runs ``mechlab.explain.explanation.explain``; its attributes are
    the ``mechlab.explain`` package's (``mechlab.explain.logit_lens``, ``mechlab.explain.probe_data``),
    so the one-call report and the methods' subpackage share the name without hiding each other.
    Nothing is imported until it is called or an attribute is read."""

    def __call__(self, model: Any, prompt: str, *, settings: Any = None, progress: Any = None) -> Any:
        return self.__wrapped__(model, prompt, settings=settings, progress=progress)

    @property
    def __wrapped__(self) -> Any:
        return importlib.import_module("mechlab.explain.explanation").explain

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.__wrapped__.__doc__

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("mechlab.explain"), name)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module("mechlab.explain"))

    def __repr__(self) -> str:
        return "<mechlab.explain: explain(model, prompt, settings=...) and the mechlab.explain methods>"
