"""The memory plan: the header read without gguf-py agrees with gguf-py, the estimate behaves as
memory does, and load_model refuses a mode that does not fit before anything is loaded."""

from pathlib import Path

import gguf
import pytest
import torch

import mechlab
from mechlab.cli import main
from mechlab.models import gguf_scan, memory
from mechlab.models.bundled import bundled_gguf_path

GB = 1024**3


def test_the_fast_header_read_agrees_with_gguf_py() -> None:
    path = bundled_gguf_path()
    header, reader = gguf_scan.read(path), gguf.GGUFReader(str(path))
    assert [(t.name, t.shape, t.ggml_type) for t in header.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type)) for t in reader.tensors
    ]
    for key in (
        "general.architecture",
        "llama.block_count",
        "llama.embedding_length",
        "llama.rope.freq_base",
    ):
        assert header.metadata[key] == pytest.approx(reader.fields[key].contents())
    assert (
        header.metadata["tokenizer.ggml.tokens"] == len(reader.fields["tokenizer.ggml.tokens"].data) == 49152
    )
    assert header.end == gguf_scan.scan(path)


def test_smollm2_shape_from_its_header() -> None:
    shape = memory.read_shape(bundled_gguf_path())
    assert (shape.n_layers, shape.d_model, shape.d_mlp, shape.n_heads, shape.d_vocab) == (
        30,
        576,
        1536,
        9,
        49152,
    )
    assert shape.n_params == 134_515_008  # what the loaded model's parameters add up to


def _plan(shape: memory.Shape, mode: str, prompt_len: int = 32, copies: str = "float32") -> memory.ModePlan:
    return memory.plan_mode(
        shape,
        mode,
        prompt_len=prompt_len,
        ig_batch=16,
        available=20 * GB,
        gpu=False,
        copies=frozenset(copies.split()),
    )


def test_the_estimate_grows_as_memory_does() -> None:
    shape = memory.read_shape(bundled_gguf_path())
    full, half = _plan(shape, "float32"), _plan(shape, "bfloat16")
    assert full.weights == 4 * shape.n_params and half.weights == 2 * shape.n_params
    assert half.forward < full.forward and half.ig < full.ig
    assert full.load < _plan(shape, "float32", copies="").load  # converting holds two copies
    # A half-precision copy, once written, loads in half the memory; writing it streams the float32 one.
    assert _plan(shape, "bfloat16", copies="float32 bfloat16").load < full.load < half.load
    assert full.forward < full.atp < full.ig < _plan(shape, "float32", prompt_len=128).ig


# Peak RSS (MiB) measured in fresh processes, float32, 32 tokens: after a forward pass, during IG,
# during an all-heads AtP sweep, and while converting the file.
MEASURED = {"smollm2": (1029, 2148, 1083, 1247), "gemma3-270m": (1965, 3489, 2033, 3331)}


@pytest.mark.parametrize("source", sorted(MEASURED))
def test_the_estimate_is_within_ten_percent_of_what_was_measured(source: str) -> None:
    try:
        path = Path(mechlab.models.load.resolve_source(source).target)
    except mechlab.BundledModelMissingError:
        pytest.skip(f"{source} is not installed")
    shape = memory.read_shape(path)
    full, converting = _plan(shape, "float32"), _plan(shape, "float32", copies="")
    estimates = (full.forward, full.ig, full.atp, converting.load)
    for estimate, measured in zip(estimates, MEASURED[source], strict=True):
        assert estimate / 2**20 == pytest.approx(measured, rel=0.1)


def test_load_model_refuses_a_mode_that_does_not_fit_and_names_those_that_do(monkeypatch) -> None:
    # SmolLM2 with its float32 and bfloat16 copies converted: a float32 forward pass needs ~0.95 GB,
    # a bfloat16 one ~0.67 GB, a quantized one ~0.65 GB; float16 would first write its copy (~0.94 GB).
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(0.9 * GB))
    monkeypatch.setattr(memory, "converted_copies", lambda path: frozenset({"float32", "bfloat16"}))
    with pytest.raises(
        mechlab.MemoryPlanError,
        match=r"as float32 on cpu needs about 1\.0 GB \(a forward pass\), but 0\.9 GB"
        r".*Modes that fit: bfloat16, quantized \(load_model\(weights=\.\.\.\)\)",
    ):
        mechlab.load_model("smollm2")
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(0.5 * GB))
    with pytest.raises(mechlab.MemoryPlanError, match="No mode fits"):
        mechlab.load_model("smollm2", dtype=torch.bfloat16)


def test_info_plan_reads_only_the_header(capsys) -> None:
    assert main(["info", "smollm2", "--plan", "--prompt-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "at 64 tokens" in out and "float32" in out and "bfloat16" in out and "Loaded" not in out


def test_a_plan_needs_a_gguf_source() -> None:
    with pytest.raises(mechlab.InputError, match="reads a GGUF header; 'toy:tiny' is a toy source"):
        mechlab.plan_memory("toy:tiny")
