"""Big random-weight GGUF files (mechlab.toy.big_gguf), checked on the tiny shape: what gguf-py reads
back, what mechlab and llama.cpp compute from them, determinism, the cache and the disk check."""

import dataclasses
import hashlib
import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import mechlab
from mechlab.models.bundled import bundled_gguf_path
from mechlab.models.verify import kl_divergence, relative_error
from mechlab.toy import big_gguf
from mechlab.toy.big_gguf import SHAPES, BigGGUFProgress, write_big_gguf

TINY = SHAPES["tiny"]
PROMPT = "The Eiffel Tower is located in the city of"
needs_llamacpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (make install-llamacpp)"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The tiny shape written as F16 and Q8_0 (seed 0), with mechlab's cache in a temporary folder."""
    root = tmp_path_factory.mktemp("big-gguf")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MECHLAB_CACHE_DIR", str(root / "cache"))
        yield {q: write_big_gguf("tiny", root / f"tiny-{q}.gguf", q) for q in ("F16", "Q8_0")}


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shape with SmolLM2's whole vocabulary and 64 padding tokens, as Q8_0."""
    shape = dataclasses.replace(TINY, name="tiny-padded", d_vocab=49152 + 64)
    return write_big_gguf(shape, tmp_path_factory.mktemp("padded") / "p.gguf", "Q8_0")


def _logits(path: Path) -> tuple[torch.Tensor, list[int]]:
    loaded = mechlab.load_model(str(path))
    tokens = loaded.model.to_tokens(PROMPT)
    with torch.no_grad():
        logits = loaded.model(tokens)[0].double()
    return logits, tokens[0].tolist()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_shapes_have_the_published_parameter_counts() -> None:
    # Meta's counts (embeddings once where tied), plus the rope_freqs divisors (d_head / 2 floats).
    assert SHAPES["llama-3.2-1b"].n_params == 1_235_814_400 + 32
    assert SHAPES["llama-3.2-3b"].n_params == 3_212_749_824 + 64
    assert SHAPES["llama-3.1-8b"].n_params == 8_030_261_248 + 64
    eight = SHAPES["llama-3.1-8b"]
    assert (eight.n_layers, eight.d_model, eight.n_heads, eight.n_kv_heads, eight.d_mlp) == (
        32,
        4096,
        32,
        8,
        14336,
    )
    assert not eight.tied and SHAPES["llama-3.2-3b"].tied and SHAPES["llama-3.2-3b"].d_head == 128


def test_a_shape_that_cannot_be_a_llama_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        dataclasses.replace(TINY, n_kv_heads=3)
    with pytest.raises(ValueError, match="heads of an even width"):
        dataclasses.replace(TINY, n_heads=3)
    with pytest.raises(
        mechlab.InputError, match=r"choose one of llama-3\.2-1b, llama-3\.2-3b, llama-3\.1-8b"
    ):
        big_gguf.shape_named("llama-9b")


def test_gguf_py_reads_back_the_converters_layout(files: dict[str, Path]) -> None:
    reader = gguf.GGUFReader(str(files["Q8_0"]))
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 + 9 * TINY.n_layers + 1  # token_embd, rope_freqs, 9 per block, output_norm
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    q8, f32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32
    assert tensors["token_embd.weight"].tensor_type == q8
    assert list(tensors["token_embd.weight"].shape) == [256, 2048]  # GGUF lists columns first
    assert list(tensors["blk.1.attn_k.weight"].shape) == [256, 128]  # 2 kv heads of 64
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [512, 256]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == f32
    field = {key: reader.fields[key].contents() for key in reader.fields if not key.startswith("tokenizer")}
    assert field["general.architecture"] == "llama" and field["general.file_type"] == 7
    assert field["llama.block_count"] == 2 and field["llama.attention.head_count_kv"] == 2
    assert field["llama.rope.freq_base"] == 500000.0 and field["llama.attention.key_length"] == 64
    assert field["llama.vocab_size"] == 2048 and field["general.quantization_version"] == 2
    divisors = np.asarray(tensors["rope_freqs.weight"].data)
    # Llama 3.2's scaling: high frequencies kept (1), low ones divided by 32, a smooth ramp between.
    assert divisors[0] == 1.0 and divisors[-1] == 32.0 and 1 < divisors[16] < 32
    np.testing.assert_array_equal(divisors, TINY.rope_scaling.divisors(64, 500000.0))

    f16 = {t.name: t for t in gguf.GGUFReader(str(files["F16"])).tensors}
    assert f16["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    weights = {
        name: np.asarray(f16[f"blk.0.{name}.weight"].data, dtype=np.float64)
        for name in ("attn_q", "ffn_down")
    }
    assert weights["attn_q"].std() == pytest.approx(0.02, rel=0.02)
    assert weights["ffn_down"].std() == pytest.approx(0.02 / 2, rel=0.02)  # 1/sqrt(2 * 2 layers)
    assert np.all(np.asarray(f16["blk.1.ffn_norm.weight"].data) == 1.0)
    # The final norm's gain spreads the logits with std 2: 2 / (0.02 * sqrt(256)).
    np.testing.assert_allclose(np.asarray(f16["output_norm.weight"].data), 6.25)


def test_mechlab_loads_it_with_finite_logits_and_q8_0_stays_close_to_f16(files: dict[str, Path]) -> None:
    f16, tokens = _logits(files["F16"])
    q8, _ = _logits(files["Q8_0"])
    assert torch.isfinite(f16).all() and len(tokens) == 14  # 2,048 tokens: finer than SmolLM2
    assert 1.8 < f16.std().item() < 2.2  # big_gguf.LOGIT_STD
    kl = kl_divergence(f16.log_softmax(-1), q8.log_softmax(-1)).mean().item()
    error = relative_error(q8, f16).max().item()
    # Q8_0's rounding and nothing more (measured: KL 8e-5, relative error 1.5%).
    assert 1e-6 < kl < 1e-3 and 1e-3 < error < 0.03


def test_activations_stay_finite_through_many_layers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    deep = dataclasses.replace(TINY, name="tiny-deep", n_layers=16)
    logits, _ = _logits(write_big_gguf(deep, tmp_path / "deep.gguf", "F16"))
    assert torch.isfinite(logits).all() and 1.8 < logits.std().item() < 2.2


def test_generation_is_deterministic_for_a_seed_and_independent_of_the_chunk_size(
    files: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    again = write_big_gguf("tiny", tmp_path / "again.gguf", "Q8_0")
    assert _sha(again) == _sha(files["Q8_0"])
    monkeypatch.setattr(big_gguf, "CHUNK_VALUES", 1000)  # 3 rows of 256 at a time instead of all
    assert _sha(write_big_gguf("tiny", tmp_path / "chunked.gguf", "Q8_0")) == _sha(files["Q8_0"])
    other = write_big_gguf("tiny", tmp_path / "seed1.gguf", "Q8_0", seed=1)
    assert other.stat().st_size == again.stat().st_size and _sha(other) != _sha(again)


def test_an_untied_shape_writes_its_own_output_projection(tmp_path: Path) -> None:
    untied = dataclasses.replace(TINY, name="tiny-untied", tied=False, rope_scaling=None)
    tensors = {
        t.name: t for t in gguf.GGUFReader(str(write_big_gguf(untied, tmp_path / "u.gguf", "F16"))).tensors
    }
    assert list(tensors["output.weight"].shape) == [256, 2048] and "rope_freqs.weight" not in tensors
    embed, output = (np.asarray(tensors[n].data) for n in ("token_embd.weight", "output.weight"))
    assert not np.array_equal(embed, output)


def test_the_vocabulary_is_padded_with_unused_tokens_up_to_the_shape(padded: Path) -> None:
    reader = gguf.GGUFReader(str(padded))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    # SmolLM2's tokens as read from its file (cached since the writer read them).
    smollm2 = big_gguf._tokenizer_fields(bundled_gguf_path())["tokenizer.ggml.tokens"]
    assert len(tokens) == 49216 and tuple(tokens[:49152]) == smollm2 and len(smollm2) == 49152
    assert tokens[49152] == "[PAD49152]" and tokens[-1] == "[PAD49215]"
    assert types[:3] == [3, 3, 3] and types[49152:] == [5] * 64  # SmolLM2's control tokens; unused pads
    assert len(reader.fields["tokenizer.ggml.merges"].contents()) == 48900  # every merge kept
    assert list(next(t for t in reader.tensors if t.name == "token_embd.weight").shape) == [256, 49216]


def test_progress_reports_the_bytes_written(tmp_path: Path) -> None:
    seen: list[BigGGUFProgress] = []
    path = write_big_gguf("tiny", tmp_path / "t.gguf", "F16", progress=seen.append)
    types = big_gguf.tensor_types(TINY, "F16")
    assert {types["blk.0.attn_q.weight"], types["blk.0.attn_norm.weight"]} == {"F16", "F32"}
    data = sum(big_gguf.tensor_nbytes(spec, types[spec.name]) for spec in TINY.tensors())
    assert {s.stage for s in seen} == {"writing F16"} and seen[-1].done == seen[-1].total == data
    assert [s.done for s in seen] == sorted(s.done for s in seen)
    assert data < path.stat().st_size < data + 2 * 1024**2  # plus the metadata, SmolLM2's tokens mostly


def test_the_cache_writes_once_per_shape_type_and_seed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path))
    first = big_gguf.big_gguf("tiny", "F16")
    assert first.parent == tmp_path / "big-gguf" and first.name.startswith("tiny-F16-seed0-")
    written = first.stat().st_mtime_ns
    assert big_gguf.big_gguf("tiny", "F16") == first and first.stat().st_mtime_ns == written
    assert len({big_gguf.cache_path("tiny", q, s) for q in ("F16", "Q8_0") for s in (0, 1)}) == 4
    monkeypatch.setattr(big_gguf, "GENERATOR_VERSION", big_gguf.GENERATOR_VERSION + 1)
    assert big_gguf.cache_path("tiny", "F16") != first
    assert [p.name for p in (tmp_path / "big-gguf").iterdir()] == [first.name]  # no temporary left


def test_a_full_disk_is_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1024**2))
    with pytest.raises(mechlab.InputError, match=r"needs 0\.\d\d GB .* which has 0\.00 GB free"):
        write_big_gguf("tiny", tmp_path / "t.gguf", "F16")
    assert list(tmp_path.iterdir()) == []
    # The Q4_K_M bound (6.6 GB) and the 8.1 GB intermediate (Q8_0, the vocabulary matrices in Q4_K and
    # Q6_K): no 16 GB F16 copy.
    assert 14.5e9 < big_gguf.disk_needed("llama-3.1-8b", "Q4_K_M") < 15e9
    assert big_gguf.disk_needed("llama-3.2-1b", "F16") == pytest.approx(2 * 1.236e9, rel=0.01)


def test_the_entry_point_writes_the_file_and_prints_its_path(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cli.gguf"
    assert big_gguf.main(["tiny", "--type", "F16", "--out", str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(path) and path.stat().st_size > 3_000_000


@pytest.mark.llamacpp
@needs_llamacpp
@pytest.mark.parametrize("qtype", ["F16", "Q4_K_M"])
def test_llama_cpp_loads_it_and_agrees_with_mechlab(qtype: str, files, tmp_path: Path, monkeypatch) -> None:
    from mechlab.models.references import llamacpp

    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    seen: list[BigGGUFProgress] = []
    path = files["F16"]
    if qtype == "Q4_K_M":
        path = write_big_gguf("tiny", tmp_path / "q4km.gguf", "Q4_K_M", progress=seen.append)
        assert [s.stage for s in (seen[0], seen[-1])] == [
            "writing the Q8_0 intermediate",
            "quantizing to Q4_K_M",
        ]
        assert seen[-1].done == seen[-1].total == path.stat().st_size
        assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == ["q4km.gguf"]  # no Q8_0 left
        reader = gguf.GGUFReader(str(path))
        assert reader.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == "Q4_K" and types["token_embd.weight"] == "Q6_K"
    ours, tokens = _logits(path)
    with llamacpp.LlamaCpp(path) as runtime:
        theirs = torch.from_numpy(runtime.logits(tokens))
    kl = kl_divergence(theirs.log_softmax(-1), ours.log_softmax(-1)).mean().item()
    # F16 agrees to float rounding (measured 8e-8); Q4_K_M adds llama.cpp's 8-bit activations (7e-5).
    assert kl < (1e-6 if qtype == "F16" else 1e-3)
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


@pytest.mark.llamacpp
@needs_llamacpp
def test_llama_cpp_reads_the_padded_vocabulary_and_tokenizes_as_smollm2(padded: Path) -> None:
    import llama_cpp

    ids = {}
    for name, source in (("padded", padded), ("smollm2", bundled_gguf_path())):
        llm = llama_cpp.Llama(model_path=str(source), vocab_only=True, verbose=False)
        try:
            ids[name] = llm.tokenize(PROMPT.encode(), add_bos=False)
            if name == "padded":
                assert llm.n_vocab() == 49216
        finally:
            llm.close()
    assert ids["padded"] == ids["smollm2"] and len(ids["padded"]) == 10


@pytest.mark.llamacpp
@needs_llamacpp
def test_llama_cpp_copies_the_vocabulary_matrices_the_intermediate_holds_in_their_final_type(
    tmp_path: Path,
) -> None:
    """The Q8_0 intermediate holds token_embd and output.weight already in the types llama.cpp gives
    them, so its quantizer copies them (no float32 buffer of the whole matrix)."""
    untied = dataclasses.replace(TINY, name="tiny-untied", tied=False)
    reader = gguf.GGUFReader(str(write_big_gguf(untied, tmp_path / "u.gguf", "Q4_K_M")))
    tensors = {t.name: t for t in reader.tensors}
    planned = big_gguf.tensor_types(untied, "Q4_K_M")
    assert (planned["token_embd.weight"], planned["output.weight"]) == ("Q4_K", "Q6_K")
    for name in ("token_embd.weight", "output.weight"):
        assert tensors[name].tensor_type.name == planned[name]
        index = [spec.name for spec in untied.tensors()].index(name)
        spec = untied.tensors()[index]
        direct = np.concatenate(
            [big_gguf._encode(chunk, planned[name]) for chunk in big_gguf._chunks(spec, index, 0, untied)]
        )
        assert np.asarray(tensors[name].data).tobytes() == direct.tobytes()
    assert tensors["blk.0.ffn_gate.weight"].tensor_type.name == "Q4_K"  # requantized from Q8_0


@pytest.mark.llamacpp
@needs_llamacpp
def test_a_type_llama_cpp_does_not_write_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(mechlab.InputError, match=r"'Q9_K' is neither F16, Q8_0 nor .* Q4_K_M, "):
        write_big_gguf("tiny", tmp_path / "t.gguf", "q9_k")
    assert list(tmp_path.iterdir()) == []
