"""``ollama:NAME[:TAG]``: a model pulled with Ollama, found in its store and loaded as the GGUF blob."""

from mechlab.models import ollama
from mechlab.models.sources.base import Resolved, Source


class OllamaSource(Source):
    scheme = "ollama"
    forms = (
        "ollama:NAME[:TAG]           a model pulled with `ollama pull` (looked up in $OLLAMA_MODELS "
        "or ~/.ollama/models)",
    )

    def resolve(self, rest: str) -> Resolved:
        return Resolved("gguf", str(ollama.resolve(rest)))
