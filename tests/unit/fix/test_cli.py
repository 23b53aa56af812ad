"""The fix commands refuse bad input with a message and exit status 2, writing nothing."""

from pathlib import Path

import torch

from mechlab.cli import main
from mechlab.directions import Direction
from mechlab.sites import Site


def _direction(tmp_path: Path) -> Path:
    direction = Direction(torch.ones(32) / 32**0.5, Site("resid_post", 1), "mean", 1.0, 1.0)
    return direction.save(tmp_path / "d.safetensors")


def test_a_missing_pairs_file_is_named(tmp_path: Path, capsys) -> None:
    assert main(["direction", "toy:tiny", "--pairs", str(tmp_path / "none.jsonl"), "--layer", "0"]) == 2
    assert "Cannot read pairs" in capsys.readouterr().err


def test_bake_needs_a_gguf_source(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fixed.gguf"
    assert main(["bake", "toy:tiny", "--direction", str(_direction(tmp_path)), "--out", str(out)]) == 2
    assert "is not a GGUF file; control vectors and baked weights are for llama.cpp" in " ".join(
        capsys.readouterr().err.split()
    )
    assert not out.exists()


def test_export_needs_a_direction(tmp_path: Path, capsys) -> None:
    assert main(["export-control-vector", "toy:tiny", "--out", str(tmp_path / "cv.gguf")]) == 2
    assert "Give the direction: --direction FILE" in " ".join(capsys.readouterr().err.split())


def test_a_control_vector_for_block_zero_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cv.gguf"
    args = ["export-control-vector", "toy:tiny", "--direction", str(_direction(tmp_path)), "--at", "0"]
    assert main([*args, "--out", str(out)]) == 2
    assert "block 0's output has no slot" in " ".join(capsys.readouterr().err.split())
    assert not out.exists()
