"""Reading a GGUF file's layout and writing a new file that reuses its header byte for byte.

A GGUF file is: the magic and version (8 bytes), the tensor count and the metadata count (8 bytes
each), the metadata entries, one tensor-info entry per tensor (name, dimensions, ggml type, data
offset), padding to the alignment (``general.alignment``, 32 by default), then each tensor's data at
its offset, each aligned. A file whose metadata stays the same can copy those bytes verbatim; only
the tensor count and the tensor-info table are written anew (a tensor added, a type changed).
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from mechlab.errors import CorruptModelError
from mechlab.models import gguf_scan

_PREFIX = 8  # magic + version
_COUNTS = 16  # tensor count + metadata count


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: its name, GGUF shape (fastest-varying first), ggml type and where its data is."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    start: int = 0  # absolute offset of the data in the source file
    n_bytes: int = 0

    @property
    def width(self) -> int:
        """Values per row (``ne0``)."""
        return self.shape[0]

    @property
    def rows(self) -> int:
        rows = 1
        for size in self.shape[1:]:
            rows *= size
        return rows


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where things are in a GGUF file."""

    path: Path
    prefix: bytes
    n_kv: int
    kv: tuple[int, int]  # the metadata's byte range
    alignment: int
    tensors: tuple[Entry, ...]
    metadata: dict[str, Any]

    def get(self, name: str) -> Entry | None:
        return next((t for t in self.tensors if t.name == name), None)

    def number(self, key: str) -> int:
        """An integer metadata value (0 where the key is absent)."""
        value = self.metadata.get(key, 0)
        return int(value) if isinstance(value, int | float) else 0


def read_layout(path: Path) -> Layout:
    """``path``'s layout: checked by mechlab's bounded header walk first, then read with gguf-py.

    Raises:
        CorruptModelError: not a readable GGUF file, or one without tensors.
    """
    import gguf

    try:
        header = gguf_scan.read(path)
        reader = gguf.GGUFReader(str(path))
    except (gguf_scan.HeaderError, ValueError, OSError) as error:
        raise CorruptModelError(f"{path} is not a readable GGUF file: {error}") from error
    if not reader.tensors:
        raise CorruptModelError(f"{path} holds no tensors.")
    tensors = tuple(
        Entry(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors
    )
    with path.open("rb") as handle:
        prefix = handle.read(_PREFIX)
    kv = (_PREFIX + _COUNTS, int(reader.tensors[0].field.offset))
    return Layout(path, prefix, len(header.metadata), kv, int(reader.alignment), tensors, header.metadata)


def write_header(src: BinaryIO, dst: BinaryIO, layout: Layout, entries: Sequence[Entry]) -> int:
    """Write the header of a file holding ``entries`` (in order; ``n_bytes`` the size each will have)
    with ``layout``'s metadata copied byte for byte. Returns where the data section starts."""
    dst.write(layout.prefix)
    dst.write(len(entries).to_bytes(8, "little") + layout.n_kv.to_bytes(8, "little"))
    copy(src, dst, layout.kv[0], layout.kv[1] - layout.kv[0])
    offset = 0
    for entry in entries:
        name = entry.name.encode()
        dst.write(len(name).to_bytes(8, "little") + name + len(entry.shape).to_bytes(4, "little"))
        dst.write(b"".join(size.to_bytes(8, "little") for size in entry.shape))
        dst.write(entry.ggml_type.to_bytes(4, "little") + offset.to_bytes(8, "little"))
        offset += entry.n_bytes
        offset += -offset % layout.alignment
    pad(dst, layout.alignment)
    return dst.tell()


def pad(dst: BinaryIO, alignment: int, base: int = 0) -> None:
    """Zero bytes up to the next multiple of ``alignment`` counted from ``base``."""
    dst.write(b"\0" * (-(dst.tell() - base) % alignment))


def copy(src: BinaryIO, dst: BinaryIO, start: int, n_bytes: int, chunk: int = 1 << 22) -> None:
    """Copy ``n_bytes`` from ``start`` in ``src`` to ``dst``, ``chunk`` bytes at a time.

    Raises:
        CorruptModelError: ``src`` ends first.
    """
    src.seek(start)
    left = n_bytes
    while left:
        block = src.read(min(chunk, left))
        if not block:
            raise CorruptModelError("The GGUF file ended inside a tensor's data; it is truncated.")
        dst.write(block)
        left -= len(block)
