"""Fuzzing GGUF headers: seeded random counts, lengths, types and truncations of a well-formed file;
every case is read or refused with a ``MechlabError``, quickly and with bounded memory."""

import random
import resource
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from mechlab import CorruptModelError, MechlabError
from mechlab.models.gguf import read_header

CASES = 300


def write_base(path: Path) -> Path:
    """A small well-formed file with every kind of field the scan walks: strings, numbers, arrays of
    numbers and of strings, and two tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_name("fuzz base")
    writer.add_token_list([f"tok{i}" for i in range(40)])
    writer.add_token_types([1] * 40)
    writer.add_array("fuzz.floats", [0.5, 1.5, 2.5])
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones((4,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def mutations(base: bytes, rng: random.Random) -> bytes:
    """One hostile variant of ``base``: a field overwritten with a random or extreme integer, bytes
    flipped, a cut, or random bytes after a valid magic."""
    data = bytearray(base)
    choice = rng.randrange(5)
    if choice == 0:  # an 8-byte field (a count or length) set to something large or random
        at = rng.randrange(8, len(data) - 8)
        value = rng.choice([2**63 - 1, 2**40, 2**32, 2**31 - 1, rng.getrandbits(64), 0])
        data[at : at + 8] = struct.pack("<Q", value)
    elif choice == 1:  # a 4-byte field (a type, a dimension count) set to something unexpected
        at = rng.randrange(4, len(data) - 4)
        data[at : at + 4] = struct.pack("<I", rng.choice([9, 13, 255, 2**31, rng.getrandbits(32)]))
    elif choice == 2:  # random bytes flipped
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(4, len(data))] ^= 1 << rng.randrange(8)
    elif choice == 3:  # cut anywhere after the magic
        data = data[: rng.randrange(4, len(data))]
    else:  # noise behind a valid magic and version
        data = bytearray(b"GGUF" + struct.pack("<I", 3) + rng.randbytes(rng.randrange(0, 512)))
    return bytes(data)


def test_generated_headers_are_read_or_refused_with_a_mechlab_error(tmp_path: Path) -> None:
    base = write_base(tmp_path / "base.gguf").read_bytes()
    assert read_header(tmp_path / "base.gguf").n_tensors == 2
    rng = random.Random(20261205)
    refused = 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slowest = 0.0
    for case in range(CASES):
        path = tmp_path / f"case{case}.gguf"
        path.write_bytes(mutations(base, rng))
        started = time.perf_counter()
        try:
            read_header(path)
        except MechlabError as error:
            refused += 1
            assert isinstance(error, CorruptModelError), f"case {case}: {type(error).__name__}: {error}"
            assert len(str(error)) < 2000, f"case {case}: a {len(str(error))}-character message"
        except Exception as error:  # anything else reaches the user as a traceback
            pytest.fail(f"case {case} raised {type(error).__name__}: {error}")
        slowest = max(slowest, time.perf_counter() - started)
        path.unlink()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert refused > CASES // 2  # most mutations break the header; the rest are read
    assert grown_kib < 200_000, f"peak memory grew {grown_kib} KiB"
    assert slowest < 10, f"one case took {slowest:.1f} s"
