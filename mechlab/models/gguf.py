"""GGUF files (llama.cpp, LM Studio, Ollama blobs): read the header, convert once, cache.

Conversion uses transformers' GGUF loader: it dequantizes every tensor to floating point, undoes
llama.cpp's Q/K row permutation, and rebuilds the tokenizer and chat template from the file's
metadata. It takes ~20 s for a 135M-parameter model, so the result is saved as a Hugging Face
directory (safetensors) in mechlab's cache, keyed by the file's sha256; later loads read that copy.
"""

import collections
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mechlab.errors import (
    MSG_CORRUPT_GGUF,
    MSG_NOT_GGUF,
    MSG_UNSUPPORTED_GGUF_ARCH,
    CorruptModelError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from mechlab.models.cache import atomic_dir_sibling, converted_dir, file_sha256
from mechlab.models.hf import quiet_transformers

GGUF_MAGIC = b"GGUF"
HEADER_FILE = "mechlab-gguf.json"


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    """What mechlab reads from a GGUF file's metadata before converting it."""

    path: str
    architecture: str
    name: str | None
    quantization: dict[str, int]
    add_bos: bool | None
    chat_template: str | None
    context_length: int | None
    n_tensors: int


def supported_architectures() -> list[str]:
    """GGUF ``general.architecture`` values that transformers' GGUF loader converts."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _check_magic(path: Path) -> int:
    """Raise unless ``path`` is an existing file starting with the GGUF magic; return its size."""
    if not path.is_file():
        raise ModelNotFoundError(
            f"GGUF file {path} does not exist. Pass the path of the .gguf file your runtime loads "
            "(llama.cpp: the -m argument; Ollama: use ollama:NAME instead)."
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise CorruptModelError(MSG_NOT_GGUF.format(path=path, magic=magic))
    return path.stat().st_size


def read_header(path: Path) -> GGUFHeader:
    """Read and sanity-check a GGUF file's header without loading its weights.

    Raises:
        ModelNotFoundError: the file does not exist.
        CorruptModelError: not a GGUF file, or a truncated/damaged one.
    """
    import gguf

    size = _check_magic(path)
    try:
        reader = gguf.GGUFReader(str(path))
        tensors = list(reader.tensors)
        end = max((t.data_offset + t.n_bytes for t in tensors), default=0)
        if end > size:
            raise ValueError(f"tensor data ends at byte {end:,}, past the end of the file")
        architecture = str(_field(reader, "general.architecture"))
    except (ValueError, IndexError, KeyError, OSError, TypeError) as error:
        raise CorruptModelError(MSG_CORRUPT_GGUF.format(path=path, error=error, size=size)) from error
    counts = collections.Counter(t.tensor_type.name for t in tensors)
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    context = _field(reader, f"{architecture}.context_length")
    name = _field(reader, "general.name")
    return GGUFHeader(
        path=str(path),
        architecture=architecture,
        name=None if name is None else str(name),
        quantization=dict(counts),
        add_bos=None if add_bos is None else bool(add_bos),
        chat_template=_field(reader, "tokenizer.chat_template"),
        context_length=None if context is None else int(context),
        n_tensors=len(tensors),
    )


def check_supported(header: GGUFHeader) -> None:
    """Raise ``UnsupportedArchitectureError`` unless transformers can convert this architecture."""
    supported = supported_architectures()
    if header.architecture not in supported:
        raise UnsupportedArchitectureError(
            MSG_UNSUPPORTED_GGUF_ARCH.format(
                path=header.path, arch=header.architecture, supported=", ".join(supported)
            )
        )


def convert(path: Path, header: GGUFHeader, out: Path, *, status: Callable[[str], None]) -> None:
    """Convert a GGUF file into a Hugging Face directory at ``out`` (float32 safetensors).

    ``status`` receives a short message before each phase, for progress display.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers(status):
            status("reading tokenizer and chat template from GGUF metadata")
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            status(f"dequantizing {header.n_tensors} tensors ({_summary(header.quantization)})")
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32
            )
    except (ValueError, OSError, KeyError, NotImplementedError, RuntimeError) as error:
        raise CorruptModelError(
            f"transformers could not convert {path} ({header.architecture}): {error}"
        ) from error
    strip_quantization(model)
    status("writing safetensors copy to the cache")
    with quiet_transformers():
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    (out / HEADER_FILE).write_text(json.dumps(dataclasses.asdict(header), indent=2))


def strip_quantization(model: Any) -> None:
    """Drop transformers' record that weights came from GGUF: they are plain floats now."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None


def ensure_converted(path: Path, *, status: Callable[[str], None]) -> tuple[Path, GGUFHeader, str, bool]:
    """Return ``(converted_dir, header, sha256, was_cached)``, converting the file if needed.

    A cache hit costs a magic-byte check and a (remembered) hash; the full header parse, which
    reads the whole vocabulary, only happens before a conversion.
    """
    _check_magic(path)
    status("hashing the GGUF file")
    sha = file_sha256(path)
    target = converted_dir(sha)
    if (target / HEADER_FILE).is_file():
        return target, load_header(target), sha, True
    header = read_header(path)
    check_supported(header)
    with atomic_dir_sibling(target) as tmp:
        convert(path, header, tmp, status=status)
    return target, header, sha, False


def load_header(converted: Path) -> GGUFHeader:
    """The header saved beside a converted copy."""
    return GGUFHeader(**json.loads((converted / HEADER_FILE).read_text()))


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
