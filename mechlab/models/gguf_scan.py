"""A bounded walk over a GGUF header before any library parses it.

gguf-py's reader trusts the counts in a header: a metadata array that claims 2^40 elements makes it
loop and allocate for minutes. ``scan`` reads the header sequentially and checks every count and
length against the bytes left in the file before it moves on, so a corrupt or hostile file is refused
in milliseconds with memory bounded by the largest single string (itself bounded by the file size).

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, ``u32`` version, ``u64`` tensor count, ``u64``
metadata count; each metadata entry is a string key, a ``u32`` value type and the value (an array
is a ``u32`` element type, a ``u64`` count and the elements); each tensor entry is a string name,
``u32`` dimension count, ``u64`` per dimension, ``u32`` type and ``u64`` offset. A string is a
``u64`` length and that many bytes.
"""

import dataclasses
import math
import struct
from pathlib import Path
from typing import Any, BinaryIO

# Value type → size in bytes of a fixed-size value (GGUF's gguf_type enum); 8 is STRING, 9 ARRAY.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_FORMAT = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_KEEP = (
    4096  # values kept by ``read``: strings of at most this many bytes, arrays of at most this many numbers
)
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 2  # arrays of arrays: llama.cpp writes none; one level is tolerated
_MAX_KEY = 65_535  # keys are short dotted names ("llama.context_length")
_MIN_TENSOR_INFO = 8 + 4 + 8 + 4 + 8  # empty name, one dimension, type, offset


class HeaderError(ValueError):
    """The header contradicts itself or the file's size; the message says where."""


class _Cursor:
    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size, self.pos = handle, size, 0

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.left():
            raise HeaderError(
                f"{what} needs {n:,} bytes at offset {self.pos:,}, but only {self.left():,} remain"
            )

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.handle.read(n)
        if len(data) != n:
            raise HeaderError(f"{what}: the file ended at offset {self.pos + len(data):,}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.handle.seek(n, 1)
        self.pos += n

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.read(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.read(8, what))[0])

    def string(self, what: str, *, limit: int | None = None) -> bytes:
        length = self.u64(f"the length of {what}")
        if limit is not None and length > limit:
            raise HeaderError(f"{what} claims {length:,} bytes (at most {limit:,} expected)")
        return self.read(length, what)

    def skip_string(self, what: str) -> None:
        self.skip(self.u64(f"the length of {what}"), what)


_CHUNK = 1 << 20


def _skip_strings(cursor: _Cursor, count: int, what: str) -> None:
    """Skip ``count`` strings, reading the file in chunks (a vocabulary holds ~10^5 of them)."""
    handle, size = cursor.handle, cursor.size
    base, buf, off = cursor.pos, b"", 0  # ``buf`` holds the file's bytes from offset ``base``
    for i in range(count):
        if len(buf) - off < 8:
            base, buf, off = base + off, buf[off:] + handle.read(_CHUNK), 0
            if len(buf) < 8:
                raise HeaderError(f"{what}[{i}]: the file ended at offset {base + len(buf):,}")
        (length,) = struct.unpack_from("<Q", buf, off)
        start = base + off + 8
        if length > size - start:
            raise HeaderError(
                f"{what}[{i}] needs {length:,} bytes at offset {start:,}, but only {size - start:,} remain"
            )
        off += 8 + length
        if off > len(buf):  # the string runs past the chunk: continue reading after it
            handle.seek(base + off)
            base, buf, off = base + off, b"", 0
    cursor.pos = base + off
    handle.seek(cursor.pos)


def _value(cursor: _Cursor, kind: int, what: str, depth: int = 0, *, keep: bool = False) -> Any:
    """Skip one value; with ``keep``, return it when it is small (a number, a short string, a short
    array of numbers) and, for a long array, its length as ``Length``."""
    if kind in _FIXED:
        if keep:
            return struct.unpack("<" + _FORMAT[kind], cursor.read(_FIXED[kind], what))[0]
        cursor.skip(_FIXED[kind], what)
    elif kind == _STRING:
        length = cursor.u64(f"the length of {what}")
        if keep and length <= _KEEP:
            return cursor.read(length, what).decode("utf-8", "replace")
        cursor.skip(length, what)
    elif kind == _ARRAY:
        if depth >= _MAX_NESTING:
            raise HeaderError(f"{what} nests arrays more than {_MAX_NESTING} deep")
        element = cursor.u32(f"the element type of {what}")
        count = cursor.u64(f"the element count of {what}")
        if element in _FIXED:
            if keep and count <= _KEEP:
                data = cursor.read(count * _FIXED[element], f"{what} ({count:,} elements)")
                return list(struct.unpack(f"<{count}{_FORMAT[element]}", data))
            cursor.skip(count * _FIXED[element], f"{what} ({count:,} elements)")
            return Length(count)
        smallest = 8 if element == _STRING else 12  # a string's length / an array's type + count
        if element not in (_STRING, _ARRAY):
            raise HeaderError(f"{what} has elements of unknown type {element}")
        cursor.need(count * smallest, f"{what} ({count:,} elements)")
        if element == _STRING:
            _skip_strings(cursor, count, what)
            return Length(count)
        for i in range(count):
            _value(cursor, element, f"{what}[{i}]", depth + 1)
        return Length(count)
    else:
        raise HeaderError(f"{what} has unknown value type {kind}")
    return None


class Length(int):
    """A metadata array too long to keep (a vocabulary): its element count."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor-info entry: name, shape (GGUF order: fastest-varying first), ggml type, and the offset
    of its data from the start of the data section."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int = 0

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Header:
    """What ``read`` keeps of a header: small metadata values, and every tensor's name and shape."""

    metadata: dict[str, Any]
    tensors: tuple[Tensor, ...]
    end: int

    @property
    def data_start(self) -> int:
        """Where the tensor data begins: ``end`` rounded up to ``general.alignment`` (default 32)."""
        alignment = int(self.metadata.get("general.alignment", 32) or 32)
        return -(-self.end // alignment) * alignment


def scan(path: Path) -> int:
    """Walk ``path``'s header, checking every count and length against the file size.

    Returns:
        The offset where the tensor-info table ends (tensor data follows, aligned).

    Raises:
        HeaderError: a count or length that the file cannot hold, an unknown type, or a header cut off.
    """
    return _walk(path, keep=False).end


def read(path: Path) -> Header:
    """``scan``, keeping the small metadata values and the tensor table (names, shapes, types).

    A vocabulary's strings are skipped, not decoded, so this takes milliseconds where gguf-py's
    reader takes seconds; long arrays are kept as their ``Length``.
    """
    return _walk(path, keep=True)


def _walk(path: Path, *, keep: bool) -> Header:
    size = path.stat().st_size
    metadata: dict[str, Any] = {}
    tensors: list[Tensor] = []
    with path.open("rb") as handle:
        cursor = _Cursor(handle, size)
        if cursor.read(4, "the magic") != b"GGUF":
            raise HeaderError("the file does not start with GGUF")
        version = cursor.u32("the version")
        if version not in (2, 3):
            raise HeaderError(f"GGUF version {version} (mechlab reads versions 2 and 3)")
        n_tensors = cursor.u64("the tensor count")
        n_kv = cursor.u64("the metadata count")
        cursor.need(n_kv * (8 + 4), f"{n_kv:,} metadata entries")
        for i in range(n_kv):
            key = cursor.string(f"metadata key #{i}", limit=_MAX_KEY)
            name = key.decode("utf-8", "replace")
            value = _value(cursor, cursor.u32(f"the type of {name[:80]!r}"), repr(name[:80]), keep=keep)
            if keep:
                metadata[name] = value
        cursor.need(n_tensors * _MIN_TENSOR_INFO, f"{n_tensors:,} tensor entries")
        for i in range(n_tensors):
            if keep:
                tensor_name = cursor.string(f"the name of tensor #{i}", limit=_MAX_KEY).decode(
                    "utf-8", "replace"
                )
            else:
                cursor.skip_string(f"the name of tensor #{i}")
            dims = cursor.u32(f"the dimension count of tensor #{i}")
            if not 1 <= dims <= _MAX_DIMS:
                raise HeaderError(f"tensor #{i} claims {dims} dimensions (1 to {_MAX_DIMS} expected)")
            if keep:
                shape = struct.unpack(f"<{dims}Q", cursor.read(8 * dims, f"the shape of tensor #{i}"))
                ggml_type = cursor.u32(f"the type of tensor #{i}")
                offset = cursor.u64(f"the offset of tensor #{i}")
                tensors.append(Tensor(tensor_name, tuple(int(d) for d in shape), ggml_type, offset))
            else:
                cursor.skip(8 * dims + 4 + 8, f"the shape, type and offset of tensor #{i}")
        return Header(metadata, tuple(tensors), cursor.pos)
