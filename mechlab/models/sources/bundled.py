"""``smollm2``, ``gemma3-270m``: real models from the package registry (``mechlab.models.bundled``)."""

from mechlab.errors import SourceError
from mechlab.models import bundled
from mechlab.models.sources.base import Resolved, Source


class BundledSource(Source):
    scheme = "bundled"
    forms = tuple(f"{model.name:<28}{model.description}" for model in bundled.MODELS)
    priority = 10

    def claims(self, text: str) -> bool:
        return bundled.named(text) is not None

    def resolve(self, rest: str) -> Resolved:
        model = bundled.named(rest)
        if model is None:
            names = ", ".join(m.name for m in bundled.MODELS)
            raise SourceError(f"bundled:{rest} names no bundled model; the bundled models are {names}.")
        return Resolved("gguf", str(bundled.gguf_path(model)))
