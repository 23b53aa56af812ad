"""Where mechlab keeps converted models, and how it writes there safely.

The cache directory is ``$MECHLAB_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/mechlab``, else
``~/.cache/mechlab``. Converted GGUF models live in ``models/<sha256 of the GGUF>/`` as a Hugging
Face directory (``config.json``, ``model.safetensors``, tokenizer files). Entries are written to a
temporary sibling directory and renamed into place, so an interrupted conversion leaves no entry
and two processes converting the same file at once both end with a complete one.
"""

import json
import os
from pathlib import Path

from mechlab.files import atomic_dir_sibling, sha256_of

CACHE_ENV = "MECHLAB_CACHE_DIR"


def cache_dir() -> Path:
    """The root of mechlab's cache (see the module docstring for the lookup order)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "mechlab"


def converted_dir(sha256: str) -> Path:
    """Directory of the converted copy of the GGUF file with this sha256."""
    return cache_dir() / "models" / sha256


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a model is hashed once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = cache_dir() / "sha256-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return str(index[key])
    index[key] = sha256_of(path)
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir_sibling(index_path) as tmp:
            tmp.write_text(json.dumps(index, indent=1))
    except OSError:
        pass  # The index only saves time; a read-only cache dir still works.
    return str(index[key])
