"""Baking a directional ablation into a GGUF file: exact where the type allows, everything else
copied byte for byte, bad input refused before anything is written."""

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import mechlab
from mechlab.fix import quantize
from mechlab.fix.bake import bake
from tests.unit.fix import tiny_gguf
from tests.unit.fix.tiny_gguf import D_MODEL, N_LAYERS

WRITERS = [f"blk.{n}.{name}.weight" for n in range(N_LAYERS) for name in ("attn_output", "ffn_down")]


def _unit(seed: int = 1) -> np.ndarray:
    u = np.random.default_rng(seed).standard_normal(D_MODEL)
    return u / np.linalg.norm(u)


def _plain_residual(weights: np.ndarray, u: np.ndarray, kind: str) -> float:
    """``|uᵀW'| / |uᵀW|`` when ``(I - uuᵀ)W`` is simply quantized to ``kind``."""
    qtype = int(gguf.GGMLQuantizationType[kind])
    edited = (weights - np.outer(u, u @ weights)).astype(np.float32)
    data = np.frombuffer(quantize.quantize(edited, qtype), np.uint8)
    rounded = quantize.dequantize(data, qtype, weights.shape[1])
    return float(np.linalg.norm(u @ rounded) / np.linalg.norm(u @ weights))


def _header(path: Path) -> bytes:
    """The file's bytes up to the tensor-info table: magic, version, counts and all metadata."""
    reader = gguf.GGUFReader(str(path))
    return path.read_bytes()[: int(reader.tensors[0].field.offset)]


def test_the_direction_is_removed_exactly_and_everything_else_is_copied(tmp_path: Path) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors())
    u = _unit()
    result = bake(source, torch.from_numpy(u), tmp_path / "baked.gguf")
    before, after = tiny_gguf.read(source), tiny_gguf.read(result.path)
    for name in WRITERS:  # [d_model rows, input width]: W' = (I - uuᵀ) W
        assert np.abs(u @ before[name]).max() > 0.1
        assert np.abs(u @ after[name]).max() < 1e-5
        np.testing.assert_allclose(after[name], before[name] - np.outer(u, u @ before[name]), atol=1e-6)
    embedding = after["token_embd.weight"]  # one d_model row per token
    np.testing.assert_allclose(embedding @ u, 0, atol=1e-5)
    np.testing.assert_allclose(
        embedding, before["token_embd.weight"] - np.outer(before["token_embd.weight"] @ u, u), atol=1e-6
    )
    # The output head stays the original embedding, now stored on its own.
    raw_before, raw_after = tiny_gguf.raw(source), tiny_gguf.raw(result.path)
    assert raw_after["output.weight"] == raw_before["token_embd.weight"]
    untouched = set(raw_before) - set(WRITERS) - {"token_embd.weight"}
    assert untouched and all(raw_after[name] == raw_before[name] for name in untouched)
    # Metadata byte for byte; only the tensor count moved (one tensor added).
    head_before, head_after = _header(source), _header(result.path)
    assert head_after[:8] == head_before[:8] and head_after[24:] == head_before[24:]
    assert int.from_bytes(head_after[8:16], "little") == int.from_bytes(head_before[8:16], "little") + 1
    assert result.residual < 1e-6 and result.noise < 1e-5 and result.layers == (0, 1, 2)
    assert [e.name for e in result.edits][-1] == "output.weight" and not result.fallbacks()


def test_a_direction_orthogonal_to_every_writer_changes_nothing(tmp_path: Path) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors(free_dim=7))
    direction = torch.zeros(D_MODEL)
    direction[7] = 2.0  # the residual dimension no tensor writes to
    result = bake(source, direction, tmp_path / "baked.gguf")
    before, after = tiny_gguf.raw(source), tiny_gguf.raw(result.path)
    assert all(after[name] == before[name] for name in before)


def test_only_the_chosen_blocks_are_edited(tmp_path: Path) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors())
    result = bake(source, torch.from_numpy(_unit()), tmp_path / "baked.gguf", layers=[2], embeddings=False)
    before, after = tiny_gguf.raw(source), tiny_gguf.raw(result.path)
    changed = sorted(name for name in before if after[name] != before[name])
    assert changed == ["blk.2.attn_output.weight", "blk.2.ffn_down.weight"]
    assert "output.weight" not in after  # the embedding is untouched, so the head may stay tied


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "Q4_0", "Q5_1"])
def test_quantized_writers_keep_their_type_and_lose_most_of_the_component(tmp_path: Path, kind: str) -> None:
    source = tiny_gguf.write(
        tmp_path / "tiny.gguf", tiny_gguf.tensors(), matrix_type=kind, embedding_type="Q8_0"
    )
    u = _unit()
    result = bake(source, torch.from_numpy(u), tmp_path / "baked.gguf")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(result.path)).tensors}
    assert all(types[name] == kind for name in WRITERS) and types["token_embd.weight"] == "Q8_0"
    before, after = tiny_gguf.read(source), tiny_gguf.read(result.path)
    left = max(np.linalg.norm(u @ after[n]) / np.linalg.norm(u @ before[n]) for n in WRITERS)
    assert left == pytest.approx(result.residual, rel=1e-6)
    # Never more than plain re-rounding keeps; on 4-bit grids (steps wider than the edit) less.
    plain = max(_plain_residual(before[n], u, kind) for n in WRITERS)
    assert left <= plain + 1e-9 and left < {"Q8_0": 0.01, "Q5_1": 0.05, "Q4_1": 0.1, "Q4_0": 0.1}[kind]
    assert np.abs(after["token_embd.weight"] @ u).max() < 0.02


def test_an_edited_type_nobody_can_write_falls_back_to_q8_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors(), matrix_type="Q4_1")
    monkeypatch.setattr(
        quantize,
        "writer_for",
        lambda ggml_type: None if quantize.type_name(ggml_type) == "Q4_1" else "gguf-py",
    )
    result = bake(source, torch.from_numpy(_unit()), tmp_path / "baked.gguf")
    assert {(e.source_type, e.written_type) for e in result.fallbacks()} == {("Q4_1", "Q8_0")}
    assert "fell back to Q8_0" in result.summary()


def test_the_written_type_can_be_chosen(tmp_path: Path) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors(), matrix_type="Q4_1")
    result = bake(source, torch.from_numpy(_unit()), tmp_path / "baked.gguf", write_type="F16")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(result.path)).tensors}
    assert {types[name] for name in WRITERS} == {"F16"} and not result.fallbacks()
    assert result.residual < 1e-3


def _no_new_files(tmp_path: Path, source: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def test_a_direction_of_the_wrong_width_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors())
    with pytest.raises(mechlab.InputError, match=r"shape \(63,\); this model's residual stream is 64 wide"):
        bake(source, torch.ones(D_MODEL - 1), tmp_path / "baked.gguf")
    with pytest.raises(mechlab.InputError, match="non-zero"):
        bake(source, torch.zeros(D_MODEL), tmp_path / "baked.gguf")
    _no_new_files(tmp_path, source)


def test_a_layer_out_of_range_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors())
    with pytest.raises(
        mechlab.InputError, match=r"Layer\(s\) \[3\] out of range: the model has 3 blocks, numbered 0 to 2"
    ):
        bake(source, torch.ones(D_MODEL), tmp_path / "baked.gguf", layers=[1, 3])
    _no_new_files(tmp_path, source)


@pytest.mark.parametrize(
    ("architecture", "reason"),
    [("gemma2", "a norm after the attention output"), ("mamba", "mechlab has no table")],
)
def test_an_architecture_without_a_write_back_map_is_refused(
    tmp_path: Path, architecture: str, reason: str
) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors(), architecture=architecture)
    with pytest.raises(
        mechlab.UnsupportedArchitectureError, match=f"{architecture!r} file: {reason}.*gpt2, llama"
    ):
        bake(source, torch.ones(D_MODEL), tmp_path / "baked.gguf")
    _no_new_files(tmp_path, source)


def test_the_source_itself_and_a_directory_are_refused(tmp_path: Path) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors())
    original = source.read_bytes()
    with pytest.raises(mechlab.InputError, match="would replace its source"):
        bake(source, torch.ones(D_MODEL), source)
    with pytest.raises(mechlab.InputError, match="is a directory"):
        bake(source, torch.ones(D_MODEL), tmp_path)
    assert source.read_bytes() == original
    _no_new_files(tmp_path, source)


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(mechlab.CorruptModelError, match="not a readable GGUF file"):
        bake(tmp_path / "junk.gguf", torch.ones(D_MODEL), tmp_path / "baked.gguf")
    assert not (tmp_path / "baked.gguf").exists()


def test_a_failed_write_leaves_the_old_output_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors())
    out = tmp_path / "baked.gguf"
    out.write_bytes(b"old")

    def disk_full(*args: object, **kwargs: object) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(quantize, "quantize", disk_full)
    with pytest.raises(OSError, match="No space"):
        bake(source, torch.ones(D_MODEL), out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baked.gguf", "tiny.gguf"]


@pytest.mark.skipif(quantize.writer_for(quantize.type_id("Q4_K")) is None, reason="needs llama-cpp-python")
def test_k_quants_are_written_by_ggml_and_imatrix_types_fall_back() -> None:
    values = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    for kind, bound in (("Q4_K", 0.1), ("Q6_K", 0.03)):
        qtype = quantize.type_id(kind)
        data = quantize.quantize(values, qtype)
        assert len(data) == 4 * quantize.row_bytes(qtype, 512)
        back = quantize.dequantize(np.frombuffer(data, np.uint8), qtype, 512)
        assert np.linalg.norm(back - values) / np.linalg.norm(values) < bound
    assert quantize.writer_for(quantize.type_id("IQ2_XXS")) is None


def test_mean_ablation_adds_the_output_biases_and_keeps_the_embeddings_constant(tmp_path: Path) -> None:
    source = tiny_gguf.write(tmp_path / "tiny.gguf", tiny_gguf.tensors())
    u = _unit()
    values = {mechlab.Site("embed"): 0.5}
    values.update(
        {mechlab.Site(kind, n): 0.1 * n - 0.2 for n in range(N_LAYERS) for kind in ("attn_out", "mlp_out")}
    )
    result = bake(source, torch.from_numpy(u), tmp_path / "baked.gguf", values=values)
    before, after = tiny_gguf.read(source), tiny_gguf.read(result.path)
    for n in range(N_LAYERS):
        for name in ("attn_output", "ffn_down"):
            np.testing.assert_allclose(after[f"blk.{n}.{name}.bias"], (0.1 * n - 0.2) * u, atol=1e-7)
            assert np.abs(u @ after[f"blk.{n}.{name}.weight"]).max() < 1e-5
    np.testing.assert_allclose(after["token_embd.weight"] @ u, 0.5, atol=1e-5)
    embedding = before["token_embd.weight"]
    np.testing.assert_allclose(
        after["token_embd.weight"], embedding - np.outer(embedding @ u - 0.5, u), atol=1e-6
    )
    biases = [e for e in result.edits if e.writer == "bias"]
    assert len(biases) == 2 * N_LAYERS and not result.fallbacks()
    assert f"Added {2 * N_LAYERS} F32 output biases" in result.summary()


def test_mean_ablation_is_refused_where_the_runtime_may_ignore_biases_or_for_other_writers(
    tmp_path: Path,
) -> None:
    qwen = tiny_gguf.write(tmp_path / "qwen.gguf", tiny_gguf.tensors(), architecture="qwen2")
    values = {mechlab.Site("mlp_out", 2): 1.0}
    with pytest.raises(mechlab.UnsupportedArchitectureError, match="'qwen2' graph adds one"):
        bake(qwen, torch.ones(D_MODEL), tmp_path / "baked.gguf", values=values)
    llama = tiny_gguf.write(tmp_path / "llama.gguf", tiny_gguf.tensors())
    with pytest.raises(
        mechlab.InputError, match=r"Values were given for mlp_out\.2, which this bake does not"
    ):
        bake(llama, torch.ones(D_MODEL), tmp_path / "baked.gguf", values=values, layers=[0, 1])
    assert not (tmp_path / "baked.gguf").exists()
