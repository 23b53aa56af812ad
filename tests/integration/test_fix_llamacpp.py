"""The fix in the runtime: a control vector and a baked GGUF run by llama.cpp itself, against what
mechlab's hooks predict, on the seed's case (SmolLM2, occupations and pronouns)."""

import importlib.util
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import mechlab
from mechlab.cli import main

LAYER = 14  # the answer-pair direction's layer (bench/fix.py; chosen on training occupations)
pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.smollm2,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (make install-llamacpp)"
    ),
]


@pytest.fixture(scope="module")
def direction(smollm2) -> mechlab.Direction:
    return mechlab.directions.from_pairs(smollm2.model, mechlab.load_pronoun_set().pairs("answer"), LAYER)


@pytest.fixture(scope="module")
def neutral(smollm2) -> torch.Tensor:
    return smollm2.model.to_tokens(mechlab.neutral_text())[0]


def test_the_direction_separates_held_out_pairs(direction) -> None:
    assert direction.site == mechlab.Site("resid_post", LAYER)
    assert direction.separation is not None and direction.separation.accuracy == 1.0
    assert direction.gap / direction.spread > 1.9


def test_the_control_vector_moves_llama_cpp_as_mechlab_predicts(smollm2, direction, tmp_path: Path) -> None:
    model = smollm2.model
    vector = mechlab.control_vector(
        direction.vector,
        direction.site,
        n_layers=30,
        d_model=576,
        scale=-1.0,
        unit=direction.spread,
        model_hint="llama",
    )
    path = mechlab.write_control_vector(vector, tmp_path / "fix.gguf")
    assert [t.name for t in gguf.GGUFReader(str(path)).tensors] == [f"direction.{LAYER}"]
    prompts = mechlab.load_pronoun_set().behaviour("held_out").prompts[::6]
    check = mechlab.check_control_vector(
        model, Path(smollm2.info.path), mechlab.read_control_vector(path), prompts
    )
    assert check.passed, check.summary()
    # The block-index convention: direction.N is block N's output (mechlab resid_post N), not N ± 1.
    assert check.correlation > max(check.earlier, check.later) + 0.02, check.summary()
    assert 0.85 < check.slope < 1.15


@pytest.mark.slow
def test_the_baked_file_runs_in_llama_cpp_as_mechlab_predicts(
    smollm2, direction, neutral, tmp_path: Path
) -> None:
    source = Path(smollm2.info.path)
    behaviour = mechlab.load_pronoun_set().behaviour("held_out")
    results = {}
    for write_type in (None, "Q8_0"):
        baked = mechlab.bake(source, direction.vector, tmp_path / f"{write_type}.gguf", write_type=write_type)
        results[write_type] = mechlab.check_bake(
            smollm2.model, source, baked.path, direction.vector, behaviour, neutral
        )
    own, q8 = results[None], results["Q8_0"]
    # In Q8_0 the file is the hook-ablated model up to llama.cpp's own activation rounding...
    assert q8.fidelity_kl < 2 * q8.floor_kl + 0.003, q8.summary()
    # ... and in the file's own Q4_1 the re-rounding costs more than the edit itself (BakeResult.noise).
    assert own.fidelity_kl > q8.fidelity_kl
    # The same behaviour before the fix in both files' runs; after it, llama.cpp follows mechlab.
    torch.testing.assert_close(own.runtime.before, q8.runtime.before)
    predicted = float(q8.predicted_after.abs().mean())
    assert float(q8.runtime.after.abs().mean()) == pytest.approx(predicted, rel=0.1)
    assert np.corrcoef(q8.runtime.after.numpy(), q8.predicted_after.numpy())[0, 1] > 0.95


@pytest.mark.slow
def test_the_cli_bakes_the_calibrated_mean_ablation_and_llama_cpp_meets_the_targets(
    tmp_path: Path, capsys
) -> None:
    """The readout direction, mean-ablated and calibrated on the training occupations, written in
    Q8_0: on held-out occupations in llama.cpp the gap falls by >= 80% at a KL <= 0.05 on neutral text."""
    out = tmp_path / "fixed.gguf"
    args = ["bake", "smollm2", "--readout", " she", " he", "--mean", "--calibrate", "--type", "Q8_0"]
    assert main([*args, "--out", str(out), "--verify"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Ollama Modelfile: FROM " in text and f"llama-cli -m {out.resolve()}" in text
    assert "Added 60 F32 output biases (mean ablation" in text
    found = re.search(r"\(([+-][\d.]+)% fall; .*? original ‖ baked, ([\d.]+) nats/token", text)
    assert found, text
    fall, kl = float(found.group(1)) / 100, float(found.group(2))
    assert fall >= 0.8 and kl <= 0.05, text
    # The file is mechlab's mean-ablated model up to llama.cpp's activation rounding.
    fidelity, floor = (
        float(x) for x in re.findall(r"KL ([\d.]+) \(the original file against mechlab: ([\d.]+)\)", text)[0]
    )
    assert fidelity < 2 * floor + 0.003, text
