"""Models pulled with Ollama, found in its local store without running Ollama.

Ollama keeps models in ``$OLLAMA_MODELS`` (default ``~/.ollama/models``)::

    manifests/registry.ollama.ai/library/NAME/TAG   JSON {"layers": [{"mediaType", "digest"}, ...]}
    blobs/sha256-<hex>                              content-addressed files

The layer with media type ``application/vnd.ollama.image.model`` is the GGUF file the runtime
loads. Names with a namespace (``ollama:user/model:tag``) and other registries
(``ollama:host/ns/model:tag``) map to the matching manifest sub-directories.
"""

import json
import os
from pathlib import Path

from mechlab.errors import MSG_OLLAMA_NOT_FOUND, CorruptModelError, OllamaModelNotFoundError, SourceError

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


def store_dir() -> Path:
    """Ollama's model store: ``$OLLAMA_MODELS`` or ``~/.ollama/models``."""
    if os.environ.get("OLLAMA_MODELS"):
        return Path(os.environ["OLLAMA_MODELS"]).expanduser()
    return Path.home() / ".ollama" / "models"


def parse_name(name: str) -> tuple[str, str, str, str]:
    """``[host/][namespace/]model[:tag]`` → ``(host, namespace, model, tag)``."""
    if not name or name.startswith(":") or name.endswith("/"):
        raise SourceError(
            f"Empty or malformed Ollama model name {name!r}; expected e.g. 'ollama:llama3.2:1b'."
        )
    path, _, tag = name.partition(":")
    parts = path.split("/")
    if len(parts) > 3 or not all(parts):
        raise SourceError(
            f"Malformed Ollama model name {name!r}: expected [host/][namespace/]model[:tag], "
            "e.g. 'ollama:smollm2:135m' or 'ollama:user/model:latest'."
        )
    host = parts[0] if len(parts) == 3 else DEFAULT_REGISTRY
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    return host, namespace, parts[-1], tag or "latest"


def resolve(name: str, store: Path | None = None) -> Path:
    """Path of the GGUF blob of Ollama model ``name`` in the store.

    Raises:
        OllamaModelNotFoundError: no manifest (the message lists the models that are there).
        CorruptModelError: the manifest is unreadable or its blob is missing.
    """
    store = store or store_dir()
    host, namespace, model, tag = parse_name(name)
    manifest = store / "manifests" / host / namespace / model / tag
    if not manifest.is_file():
        available = list_models(store)
        listing = (
            f"Models in {store}: {', '.join(available)}.\n"
            if available
            else f"The store {store} has no models.\n"
        )
        raise OllamaModelNotFoundError(
            MSG_OLLAMA_NOT_FOUND.format(name=model, tag=tag, manifest=manifest, available=listing)
        )
    try:
        layers = json.loads(manifest.read_text())["layers"]
        digest = next(layer["digest"] for layer in layers if layer["mediaType"] == MODEL_MEDIA_TYPE)
    except (ValueError, KeyError, TypeError, StopIteration) as error:
        raise CorruptModelError(
            f"Ollama manifest {manifest} has no readable layer of type {MODEL_MEDIA_TYPE} ({error!r}). "
            f"Re-pull the model with `ollama pull {model}:{tag}`."
        ) from error
    blob = store / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise CorruptModelError(
            f"Ollama manifest {manifest} points to blob {blob}, which is missing. "
            f"Re-pull the model with `ollama pull {model}:{tag}`."
        )
    return blob


def list_models(store: Path | None = None) -> list[str]:
    """``name:tag`` of every model in the store (namespaced names outside ``library``)."""
    root = (store or store_dir()) / "manifests"
    if not root.is_dir():
        return []
    names = []
    for manifest in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = manifest.relative_to(root).parts
        if len(parts) != 4:
            continue
        host, namespace, model, tag = parts
        prefix = "" if (host, namespace) == (DEFAULT_REGISTRY, DEFAULT_NAMESPACE) else f"{namespace}/"
        names.append(f"{prefix}{model}:{tag}")
    return names
