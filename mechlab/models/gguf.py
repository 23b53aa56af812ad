"""GGUF files (llama.cpp, LM Studio, Ollama blobs): read the header, convert once, cache.

Conversion uses transformers' GGUF loader: it dequantizes every tensor to floating point, undoes
llama.cpp's Q/K row permutation, and rebuilds the tokenizer and chat template from the file's
metadata. It takes ~25 s for a 135M-parameter model, so the result is saved as a Hugging Face
directory (safetensors) in mechlab's cache, keyed by the file's sha256; later loads read that copy.

Before converting, the file's ``general.architecture`` is checked three ways, so an unusable file
fails before the conversion and leaves nothing in the cache: transformers' GGUF loader must convert
it, transformers must load it as a causal LM (T5's encoder-decoder does not qualify), and
TransformerLens must have an adapter for the resulting class.

transformers' loader leaves every config field its key table does not name at the class default;
``mechlab.models.gguf_config`` sets those fields to what llama.cpp reads from the same file (a Gemma
query scale, a Qwen3 head size, soft-capping constants, sliding-window layers, RoPE bases), and
refuses a file whose RoPE scaling transformers cannot express.
"""

import collections
import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mechlab.errors import (
    MSG_CORRUPT_GGUF,
    MSG_NOT_CAUSAL_GGUF_ARCH,
    MSG_NOT_GGUF,
    MSG_UNHOOKABLE_GGUF_ARCH,
    MSG_UNSUPPORTED_GGUF_ARCH,
    CorruptModelError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from mechlab.files import atomic_dir_sibling, check_disk, kind
from mechlab.models import gguf_config, gguf_scan
from mechlab.models.cache import converted_dir, file_sha256
from mechlab.models.hf import quiet_transformers

GGUF_MAGIC = b"GGUF"
HEADER_FILE = "mechlab-gguf.json"
# Bumped when the conversion changes what it writes: a cached copy converted by an older version is
# converted again (version 2: config fields from gguf_config).
CONVERSION_VERSION = 2
# llama.cpp architecture names that transformers' GGUF loader renames to its own model types
# (transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint; a unit test compares the two).
_LLAMA_CPP_RENAMES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
}
# GGUF files of these hold only the text backbone, which transformers loads under a *_text type.
_TEXT_ONLY = {"gemma3": "gemma3_text", "gemma4": "gemma4_text"}


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
    # Config fields llama.cpp reads from the file and transformers' loader does not (gguf_config).
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Why the file cannot be converted faithfully, if it cannot (check_supported raises it).
    unconvertible: str | None = None
    conversion: int = 1


def convertible_architectures() -> list[str]:
    """Architectures (transformers' names) that transformers' GGUF loader converts."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))


def model_type(architecture: str) -> str:
    """The transformers model type a GGUF ``general.architecture`` converts to.

    >>> model_type("llama"), model_type("qwen2moe"), model_type("gemma3"), model_type("t5encoder")
    ('llama', 'qwen2_moe', 'gemma3_text', 't5')
    """
    if "t5" in architecture:  # t5, t5encoder; umt5 files say "t5" too and differ only in general.name
        return "t5"
    loader_name = _LLAMA_CPP_RENAMES.get(architecture, architecture)
    return _TEXT_ONLY.get(loader_name, loader_name)


def causal_lm_class(architecture: str) -> str | None:
    """The transformers class AutoModelForCausalLM builds for this GGUF architecture, if any."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type(architecture))
    return name if isinstance(name, str) else None


def _hookable_classes() -> dict[str, Any]:
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return SUPPORTED_ARCHITECTURES


def supported_architectures() -> list[str]:
    """GGUF architectures (llama.cpp's names) mechlab loads: converted, a causal LM, and hookable."""
    from_loader = {v: k for k, v in _LLAMA_CPP_RENAMES.items()}
    hookable = _hookable_classes()
    names = (from_loader.get(a, a) for a in convertible_architectures())
    return sorted(a for a in names if causal_lm_class(a) in hookable)


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _check_magic(path: Path) -> int:
    """Raise unless ``path`` is an existing file starting with the GGUF magic; return its size."""
    if not path.is_file():
        if path.exists():
            raise ModelNotFoundError(
                f"{path} is {kind(path)}, not a file. Pass the path of the .gguf file your runtime loads."
            )
        raise ModelNotFoundError(
            f"GGUF file {path} does not exist. Pass the path of the .gguf file your runtime loads "
            "(llama.cpp: the -m argument; Ollama: use ollama:NAME instead)."
        )
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise ModelNotFoundError(
            f"GGUF file {path} cannot be read: {error.strerror}. Check its permissions (the user running "
            "mechlab needs read access), or copy it somewhere readable."
        ) from error
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
        gguf_scan.scan(path)  # every count checked against the file size before gguf-py allocates
        reader = gguf.GGUFReader(str(path))
        tensors = list(reader.tensors)
        end = max((t.data_offset + t.n_bytes for t in tensors), default=0)
        if end > size:
            raise ValueError(f"tensor data ends at byte {end:,}, past the end of the file")
        architecture = str(_field(reader, "general.architecture"))
    except (ValueError, IndexError, KeyError, OSError, TypeError) as error:
        raise CorruptModelError(MSG_CORRUPT_GGUF.format(path=path, error=error, size=size)) from error
    counts = collections.Counter(t.tensor_type.name for t in tensors)
    metadata = {k: _field(reader, k) for k in reader.fields if k.startswith(f"{architecture}.")}
    try:
        data = {t.name: t.data for t in tensors}
        config = gguf_config.overrides(architecture, metadata, data, source=str(path))
        unconvertible = None
    except UnsupportedArchitectureError as error:
        config, unconvertible = {}, str(error)
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
        config=config,
        unconvertible=unconvertible,
        conversion=CONVERSION_VERSION,
    )


def check_supported(header: GGUFHeader) -> None:
    """Raise ``UnsupportedArchitectureError`` unless mechlab can convert, load and hook this file.

    Runs before the conversion, so it costs no dequantization and writes nothing to the cache.
    """
    arch = header.architecture
    if len(arch) > 64:  # a name this long is not an architecture: show its start only
        arch = arch[:64] + f"… ({len(header.architecture):,} characters)"
    supported = ", ".join(supported_architectures())
    if arch not in convertible_architectures() and model_type(arch) not in convertible_architectures():
        raise UnsupportedArchitectureError(
            MSG_UNSUPPORTED_GGUF_ARCH.format(path=header.path, arch=arch, supported=supported)
        )
    hf_class = causal_lm_class(arch)
    if hf_class is None:
        raise UnsupportedArchitectureError(
            MSG_NOT_CAUSAL_GGUF_ARCH.format(
                path=header.path, arch=arch, model_type=model_type(arch), supported=supported
            )
        )
    if hf_class not in _hookable_classes():
        raise UnsupportedArchitectureError(
            MSG_UNHOOKABLE_GGUF_ARCH.format(
                path=header.path,
                arch=arch,
                hf_class=hf_class,
                tl_version=transformer_lens_version(),
                supported=supported,
            )
        )
    if header.unconvertible is not None:
        raise UnsupportedArchitectureError(header.unconvertible)


def transformer_lens_version() -> str:
    """The installed TransformerLens version (the package has no ``__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:
        return "4.x"


def convert(
    path: Path, header: GGUFHeader, out: Path, *, status: Callable[[str], None], weights: bool = True
) -> None:
    """Convert a GGUF file into a Hugging Face directory at ``out`` (float32 safetensors).

    ``weights=False`` writes the config and tokenizer only (quantized mode reads the weights from the
    GGUF file itself). ``status`` receives a short message before each phase, for progress display.
    """
    from transformers import AutoTokenizer

    try:
        with quiet_transformers(status):
            status("reading tokenizer and chat template from GGUF metadata")
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            if weights:
                status(f"dequantizing {header.n_tensors} tensors ({_summary(header.quantization)})")
                model = load_causal_lm(path, header)
            else:
                config = load_config(path, header)
    except (ValueError, OSError, KeyError, NotImplementedError, RuntimeError) as error:
        raise CorruptModelError(
            f"transformers could not convert {path} ({header.architecture}): {error}"
        ) from error
    with quiet_transformers():
        if weights:
            strip_quantization(model)
            status("writing safetensors copy to the cache")
            model.save_pretrained(str(out))
        else:
            out.mkdir(parents=True, exist_ok=True)
            if hasattr(config, "quantization_config"):  # the weights stay GGUF blocks, read by mechlab
                del config.quantization_config
            config.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    (out / HEADER_FILE).write_text(json.dumps(dataclasses.asdict(header), indent=2))


def load_config(path: Path, header: GGUFHeader) -> Any:
    """transformers' config of a GGUF file, completed with ``header.config`` (what llama.cpp reads)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    for name, value in header.config.items():
        setattr(config, name, value)
    return config


def load_causal_lm(path: Path, header: GGUFHeader) -> Any:
    """transformers' GGUF loader (float32), its config completed with ``header.config``."""
    from transformers import AutoModelForCausalLM

    config = load_config(path, header)
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, config=config, dtype=torch.float32
    )


def strip_quantization(model: Any) -> None:
    """Drop transformers' record that weights came from GGUF: they are plain floats now."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None


def ensure_converted(
    path: Path, *, status: Callable[[str], None], weights: bool = True
) -> tuple[Path, GGUFHeader, str, bool]:
    """Return ``(converted_dir, header, sha256, was_cached)``, converting the file if needed.

    ``weights=False``: the directory ``<converted_dir>-quantized`` with the config and tokenizer only
    (quantized mode). A cache hit costs a magic-byte check and a (remembered) hash; the full header
    parse, which reads the whole vocabulary, only happens before a conversion.
    """
    _check_magic(path)
    status("hashing the GGUF file")
    sha = file_sha256(path)
    target = converted_dir(sha)
    if not weights:
        target = target.with_name(f"{target.name}-quantized")
    if (target / HEADER_FILE).is_file():
        cached = load_header(target)
        if cached.conversion == CONVERSION_VERSION:
            return target, cached, sha, True
        discard_converted(target)  # converted by an older mechlab: convert again
    header = read_header(path)
    check_supported(header)
    if not weights:
        from mechlab.models.quantized import check_architecture

        check_architecture(header.architecture, path)
    else:
        n_params = sum(t.n_elements for t in gguf_scan.read(path).tensors)
        check_disk(target.parent, 4 * n_params + 64 * 1024**2, f"the float32 copy of {path.name}")
    with atomic_dir_sibling(target) as tmp:
        convert(path, header, tmp, status=status, weights=weights)
    return target, header, sha, False


def discard_converted(converted: Path) -> None:
    """Remove a converted copy (one this process just wrote and then failed to load)."""
    shutil.rmtree(converted, ignore_errors=True)


def load_header(converted: Path) -> GGUFHeader:
    """The header saved beside a converted copy."""
    return GGUFHeader(**json.loads((converted / HEADER_FILE).read_text()))


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
