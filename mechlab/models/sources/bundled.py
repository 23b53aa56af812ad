"""``smollm2``: the bundled SmolLM2-135M-Instruct GGUF (``mechlab.models.bundled``)."""

from mechlab.models import bundled
from mechlab.models.sources.base import Resolved, Source


class BundledSource(Source):
    scheme = "bundled"
    forms = ("smollm2                     the bundled SmolLM2-135M-Instruct GGUF",)
    priority = 10

    def claims(self, text: str) -> bool:
        return text.lower() in bundled.ALIASES

    def resolve(self, rest: str) -> Resolved:
        return Resolved("gguf", str(bundled.bundled_gguf_path()))
