"""Half-precision converted copies: written tensor by tensor into shards, loaded without the float32
copy, with the same weights as casting the float32 model; refused when the disk is too small."""

import shutil
from collections import namedtuple

import pytest
import torch

from mechlab import InputError
from mechlab.models import hf, precision
from tests.tiny_llama import save_tiny_llama


@pytest.fixture
def converted(tmp_path):
    """A converted copy as the GGUF source writes it: a Hugging Face directory and mechlab's header."""
    directory = save_tiny_llama(tmp_path / "models" / "abc123", vocab_size=50, initializer_range=0.1)
    (directory / "mechlab-gguf.json").write_text('{"conversion": 1}')
    return directory


def test_a_bfloat16_copy_matches_casting_the_float32_model(converted, monkeypatch) -> None:
    monkeypatch.setattr(precision, "SHARD_BYTES", 20_000)  # several shards for a tiny model
    copy = precision.copy_in(converted, torch.bfloat16)
    assert copy == converted.with_name("abc123-bfloat16") and precision.has_copy(converted, torch.bfloat16)
    assert len(list(copy.glob("model-*.safetensors"))) > 2 and not list(copy.glob("model.safetensors"))
    half, _ = hf.load_dir(copy, dtype=torch.bfloat16)
    full, _ = hf.load_dir(converted, dtype=torch.float32)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    for (name, a), (_, b) in zip(
        half.state_dict().items(), full.to(torch.bfloat16).state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert precision.copy_in(converted, torch.bfloat16) == copy  # written once
    assert precision.copy_in(converted, torch.float32) == converted


def test_a_disk_too_small_is_refused_before_writing(converted, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(
        InputError, match=r"needs 0\.\d+ GB in .*, which has 0\.00 GB free.*MECHLAB_CACHE_DIR"
    ):
        precision.copy_in(converted, torch.float16)
    assert not precision.has_copy(converted, torch.float16)
    assert [p.name for p in converted.parent.iterdir()] == ["abc123"]


def test_a_copy_of_an_earlier_conversion_is_written_again(converted) -> None:
    first = precision.copy_in(converted, torch.bfloat16)
    (converted / "mechlab-gguf.json").write_text('{"conversion": 2}')  # the file was converted again
    assert not precision.has_copy(converted, torch.bfloat16)
    again = precision.copy_in(converted, torch.bfloat16)
    assert again == first and (again / "mechlab-gguf.json").read_text() == '{"conversion": 2}'
