"""Hostile GGUF headers are refused by counting bytes, before gguf-py parses (and allocates) anything."""

import resource
import struct
from pathlib import Path

import pytest

import mechlab
from mechlab.models.gguf_scan import HeaderError, scan
from tests.unit.models.test_sources import write_gguf


def string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def header(*entries: bytes, n_tensors: int = 0, n_kv: int | None = None, version: int = 3) -> bytes:
    count = len(entries) if n_kv is None else n_kv
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, count) + b"".join(entries)


ARCH = string(b"general.architecture") + struct.pack("<I", 8) + string(b"llama")


def array(key: bytes, element_type: int, count: int, payload: bytes = b"") -> bytes:
    return string(key) + struct.pack("<IIQ", 9, element_type, count) + payload


HOSTILE = {
    "array of 2^40 u32": header(ARCH, array(b"tokenizer.ggml.token_type", 4, 2**40)),
    "array of 2^40 strings": header(ARCH, array(b"tokenizer.ggml.tokens", 8, 2**40)),
    "string of 2^62 bytes": header(string(b"general.architecture") + struct.pack("<IQ", 8, 2**62)),
    "key of 2^40 bytes": header(struct.pack("<Q", 2**40)),
    "2^60 metadata entries": header(ARCH, n_kv=2**60),
    "2^60 tensors": header(ARCH, n_tensors=2**60),
    "unknown value type": header(string(b"general.name") + struct.pack("<I", 77)),
    "arrays nested too deep": header(ARCH, array(b"x", 9, 1, struct.pack("<IQ", 9, 1) * 3)),
    "cut inside a string": header(ARCH)[:-2],
    "version 1": header(ARCH, version=1),
    "tensor with 9 dimensions": header(ARCH, n_tensors=1) + string(b"t") + struct.pack("<I", 9) + b"\0" * 200,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_headers_are_refused_by_the_scan(tmp_path: Path, name: str) -> None:
    path = tmp_path / "hostile.gguf"
    path.write_bytes(HOSTILE[name])
    with pytest.raises(HeaderError):
        scan(path)


def test_a_huge_array_count_is_refused_quickly_through_load_model(tmp_path: Path) -> None:
    path = tmp_path / "huge.gguf"
    path.write_bytes(HOSTILE["array of 2^40 u32"] + b"\0" * 4096)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(mechlab.CorruptModelError, match=r"'tokenizer\.ggml\.token_type' \(1,099,511,627,776"):
        mechlab.load_model(str(path))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 200_000  # gguf-py alone allocated 3 GB (and ran 85 s) on this file


def test_well_formed_files_pass_and_the_scan_ends_at_the_tensor_table(tmp_path: Path) -> None:
    import gguf

    path = write_gguf(tmp_path / "ok.gguf")
    end = scan(path)
    reader = gguf.GGUFReader(str(path))
    assert end <= reader.data_offset < end + reader.alignment  # data starts at the next boundary


@pytest.mark.smollm2
def test_the_bundled_model_passes_the_scan() -> None:
    import gguf

    from mechlab.models.bundled import bundled_gguf_path

    path = bundled_gguf_path()
    assert scan(path) == gguf.GGUFReader(str(path)).data_offset  # 49,152 tokens and the merges walked
