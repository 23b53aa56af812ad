"""Models pulled with Ollama, found in its local store without running Ollama.

Ollama keeps models in ``$OLLAMA_MODELS`` (default ``~/.ollama/models``)::

    manifests/registry.ollama.ai/library/NAME/TAG   JSON {"layers": [{"mediaType", "digest"}, ...]}
    blobs/sha256-<hex>                              content-addressed files

The layer with media type ``application/vnd.ollama.image.model`` is the GGUF file the runtime
loads. Names with a namespace (``ollama:user/model:tag``) and other registries
(``ollama:host/ns/model:tag``) map to the matching manifest sub-directories.

Nothing from a name or a manifest reaches a path unchecked: every part of a name must match Ollama's
own grammar (letters, digits, ``_ . -``; no leading dot, so no ``..``), a digest must be
``sha256:<64 hex digits>``, every path must stay inside the store, and the blob's sha256 must equal
its name (one hash the first time; ``mechlab.models.cache.file_sha256`` remembers it).
"""

import json
import os
import re
from pathlib import Path

from mechlab.errors import MSG_OLLAMA_NOT_FOUND, CorruptModelError, OllamaModelNotFoundError, SourceError
from mechlab.models.cache import file_sha256

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
# Ollama's name grammar (types/model/name.go): each part starts with a letter or digit (a tag may
# start with "_"), then letters, digits, "_", "." or "-"; a host may also hold ":" (a port).
_PART = {
    "host": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,349}$"),
    "namespace": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"),
    "model": re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"),
    "tag": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$"),
}
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


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
    fields = {"host": host, "namespace": namespace, "model": parts[-1], "tag": tag or "latest"}
    for what, value in fields.items():
        if not _PART[what].match(value):
            raise SourceError(
                f"Malformed Ollama model name {name!r}: its {what} {value[:80]!r} is not a valid Ollama "
                "name part (letters, digits, '_', '.', '-'; starting with a letter or digit). Write the "
                "name as `ollama list` shows it, e.g. 'ollama:llama3.2:1b'."
            )
    return host, namespace, parts[-1], tag or "latest"


def _inside(store: Path, path: Path, what: str) -> Path:
    """``path`` resolved, required to lie inside ``store`` (a symbolic link may not lead out)."""
    try:
        resolved = path.resolve(strict=False)
        root = store.resolve(strict=False)
    except (OSError, RuntimeError) as error:
        raise CorruptModelError(f"Ollama {what} {path} cannot be resolved: {error}.") from error
    if not resolved.is_relative_to(root):
        raise CorruptModelError(
            f"Ollama {what} {path} leads outside the store {store}; mechlab reads only files inside it. "
            "Re-pull the model with `ollama pull`."
        )
    return resolved


def resolve(name: str, store: Path | None = None) -> Path:
    """Path of the GGUF blob of Ollama model ``name`` in the store.

    Raises:
        OllamaModelNotFoundError: no manifest (the message lists the models that are there).
        CorruptModelError: the manifest is unreadable or its blob is missing.
    """
    store = store or store_dir()
    host, namespace, model, tag = parse_name(name)
    manifest = _inside(store, store / "manifests" / host / namespace / model / tag, "manifest")
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
    repull = f"Re-pull the model with `ollama pull {model}:{tag}`."
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        digest = next(layer["digest"] for layer in layers if layer["mediaType"] == MODEL_MEDIA_TYPE)
    except OSError as error:
        raise CorruptModelError(
            f"Ollama manifest {manifest} cannot be read: {error.strerror}. {repull}"
        ) from error
    except (ValueError, KeyError, TypeError, StopIteration) as error:
        raise CorruptModelError(
            f"Ollama manifest {manifest} has no readable layer of type {MODEL_MEDIA_TYPE} "
            f"({type(error).__name__}). {repull}"
        ) from error
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if match is None:
        shown = repr(digest)[:80]
        raise CorruptModelError(
            f"Ollama manifest {manifest} names the model layer by {shown}, not a sha256:<64 hex digits> "
            f"digest. {repull}"
        )
    blob = _inside(store, store / "blobs" / f"sha256-{match.group(1)}", "blob")
    if not blob.is_file():
        raise CorruptModelError(
            f"Ollama manifest {manifest} points to blob {blob}, which is missing. {repull}"
        )
    actual = file_sha256(blob)
    if actual != match.group(1):
        raise CorruptModelError(
            f"Ollama blob {blob} does not hold what its name says: its sha256 is {actual}. The file is "
            f"damaged or was replaced. {repull}"
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
