"""Converted copies in half precision: written once from the float32 copy, tensor by tensor.

A GGUF file is converted once to a float32 copy (``mechlab.models.gguf``). Loading it in bfloat16 or
float16 from that copy would hold the float32 weights and the cast model together; instead the first
half-precision load writes a sibling copy in that dtype — each tensor read from the float32 file,
cast and written into shards of at most ``SHARD_BYTES``, so no whole-model copy is ever held — and
later loads read it directly (peak: the half-precision weights).
"""

import json
import shutil
from pathlib import Path

import torch

from mechlab.files import atomic_dir_sibling, atomic_write, check_disk

SHARD_BYTES = 256 * 1024**2
INDEX = "model.safetensors.index.json"
NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _weight_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def _sibling(converted: Path, dtype: torch.dtype) -> Path:
    return converted.with_name(f"{converted.name}-{NAMES[dtype]}")


def has_copy(converted: Path, dtype: torch.dtype) -> bool:
    """Whether the ``dtype`` copy of this converted copy has been written, from this conversion (its
    header file is the float32 copy's: a file converted again gets a new half-precision copy)."""
    from mechlab.models.gguf import HEADER_FILE

    target = _sibling(converted, dtype)
    if not ((target / "config.json").is_file() and (target / INDEX).is_file()):
        return False
    try:
        return (target / HEADER_FILE).read_bytes() == (converted / HEADER_FILE).read_bytes()
    except OSError:
        return False


def copy_in(converted: Path, dtype: torch.dtype) -> Path:
    """The converted copy to load in ``dtype``: the float32 copy itself, or its sibling
    ``<converted>-<dtype>`` (written on first use)."""
    name = NAMES.get(dtype)
    if name is None:
        return converted
    target = _sibling(converted, dtype)
    if has_copy(converted, dtype):
        return target
    shutil.rmtree(target, ignore_errors=True)  # a copy of an earlier conversion
    from safetensors import safe_open
    from safetensors.torch import save_file

    sources = _weight_files(converted)
    needed = sum(path.stat().st_size for path in sources) * dtype.itemsize // 4
    check_disk(target.parent, needed + 64 * 1024**2, f"the {name} copy of {converted.name}")
    with atomic_dir_sibling(target) as tmp:
        tmp.mkdir()
        weight_map: dict[str, str] = {}
        shard: dict[str, torch.Tensor] = {}
        size = total = 0

        def flush() -> None:
            nonlocal shard, size
            if shard:
                file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
                save_file(shard, str(tmp / file), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, file))
            shard, size = {}, 0

        for source in sources:
            with safe_open(str(source), framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    cast = tensor.to(dtype) if tensor.is_floating_point() else tensor
                    shard[key] = cast
                    size += cast.numel() * cast.element_size()
                    total += cast.numel() * cast.element_size()
                    if size >= SHARD_BYTES:
                        flush()
        flush()
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write(tmp / INDEX, json.dumps(index, indent=1))
        for path in converted.iterdir():
            if path.is_file() and path.suffix != ".safetensors" and path.name != INDEX:
                shutil.copy2(path, tmp / path.name)
        config = json.loads((tmp / "config.json").read_text())
        config["torch_dtype"] = config["dtype"] = name
        atomic_write(tmp / "config.json", json.dumps(config, indent=2))
    return target
