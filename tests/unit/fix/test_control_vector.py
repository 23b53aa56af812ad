"""llama.cpp control vectors: the file llama.cpp loads, the block each vector belongs to, bad input."""

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import mechlab
from mechlab.fix.control_vector import ControlVector, block_of, control_vector, read_control_vector
from mechlab.sites import Site


def test_the_file_is_what_llama_cpp_reads(tmp_path: Path) -> None:
    direction = torch.tensor([3.0, 4.0] + [0.0] * 30)
    vector = control_vector(direction, Site("resid_post", 5), n_layers=8, d_model=32, scale=-2.0, unit=1.5)
    path = mechlab.write_control_vector(vector, tmp_path / "fix.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.layer_count"].contents() == 7
    (tensor,) = reader.tensors
    assert tensor.name == "direction.5" and tensor.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensor.shape) == [32]
    # -2 σ with σ = 1.5 along the unit direction (0.6, 0.8, 0, ...)
    np.testing.assert_allclose(np.asarray(tensor.data)[:3], [-1.8, -2.4, 0.0], rtol=1e-6)
    back = read_control_vector(path)
    assert back.n_layers == 8 and np.array_equal(back.vectors[5], vector.vectors[5])


def test_the_flat_buffer_starts_at_block_one() -> None:
    vectors = {1: np.full(4, 1.0, np.float32), 3: np.full(4, 3.0, np.float32)}
    flat = ControlVector(vectors, n_layers=5).flat(strength=2.0)
    assert flat.tolist() == [2.0] * 4 + [0.0] * 4 + [6.0] * 4 + [0.0] * 4


def test_resid_post_n_is_direction_n_and_resid_pre_n_is_the_block_before() -> None:
    assert block_of(Site("resid_post", 1), 30) == 1
    assert block_of(Site("resid_post", 29), 30) == 29
    assert block_of(Site("resid_pre", 12), 30) == 11


@pytest.mark.parametrize(
    "site",
    [
        Site("resid_post", 0),
        Site("resid_pre", 1),
        Site("resid_post", 30),
        Site("attn_out", 4),
        Site("resid_post", 3, pos=2),
    ],
)
def test_sites_without_a_llama_cpp_slot_are_refused(site: Site) -> None:
    with pytest.raises(mechlab.InputError, match=r"direction\.N to the output of block N \(N = 1 to 29\)"):
        block_of(site, 30)


def test_a_direction_of_the_wrong_width_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(mechlab.InputError, match=r"shape \(31,\); this model's residual stream is 32 wide"):
        control_vector(torch.ones(31), Site("resid_post", 2), n_layers=4, d_model=32)
    with pytest.raises(mechlab.InputError, match="non-zero"):
        control_vector(torch.zeros(32), Site("resid_post", 2), n_layers=4, d_model=32)
    assert list(tmp_path.iterdir()) == []


def test_files_llama_cpp_would_reject_are_refused(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "controlvector")
    writer.add_tensor("direction.0", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(mechlab.CorruptModelError, match=r"direction\.N, N >= 1"):
        read_control_vector(tmp_path / "bad.gguf")
    (tmp_path / "text.gguf").write_text("not a gguf file")
    with pytest.raises(mechlab.CorruptModelError, match="not a readable GGUF"):
        read_control_vector(tmp_path / "text.gguf")


def test_an_existing_file_is_replaced_only_by_a_complete_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: gguf.GGUFWriter, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    target = tmp_path / "fix.gguf"
    target.write_bytes(b"old")
    vector = control_vector(torch.ones(32), Site("resid_post", 2), n_layers=4, d_model=32)
    with pytest.raises(OSError, match="No space"):
        mechlab.write_control_vector(vector, target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fix.gguf"]
