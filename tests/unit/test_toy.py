"""Toy training: the data, the trainer's contract, and the circuits the trained models contain."""

from pathlib import Path

import pytest
import torch

import mechlab
from mechlab import Site, run_detectors
from mechlab.toy import induction_batch


def batch(layout: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return induction_batch(
        256,
        seq_len=64,
        d_vocab=64,
        layout=layout,
        min_repeat=4,
        generator=generator,
    )


def test_random_layout_repeats_a_stretch_at_random_offsets() -> None:
    tokens, mask = batch("random")
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] > 0).all()
    starts, lengths = set(), set()
    for row, scored in zip(tokens, mask, strict=True):
        positions = scored.nonzero().flatten()
        second, length = int(positions[0]), len(positions) + 1  # scored: 2nd..last token of the copy
        assert positions.tolist() == list(range(second, second + length - 1))
        copy = row[second : second + length]
        first = [s for s in range(1, second - length + 1) if torch.equal(row[s : s + length], copy)]
        assert first, "the second copy repeats an earlier stretch"
        starts.add(second)
        lengths.add(length)
    assert len(starts) > 20 and min(lengths) == 4 and max(lengths) == 31


def test_fixed_layout_is_bos_r_r() -> None:
    tokens, mask = batch("fixed")
    assert torch.equal(tokens[:, 1:32], tokens[:, 32:63])
    assert mask.sum(1).unique().tolist() == [30]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="layout must be one of"):
        mechlab.ToyTrainConfig(layout="shifted")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        mechlab.ToyTrainConfig(steps=0)
    with pytest.raises(ValueError, match="does not fit twice"):
        mechlab.ToyTrainConfig(min_repeat=40).model_config()


def test_training_is_deterministic_silent_and_reports_progress(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seen: list[mechlab.TrainStep] = []
    threads = torch.get_num_threads()
    config = mechlab.ToyTrainConfig(steps=6, batch_size=8)
    first = mechlab.train_induction_toy(config, progress=seen.append, log_every=2)
    second = mechlab.train_induction_toy(config)
    assert capsys.readouterr().out == ""
    assert torch.get_num_threads() == threads  # the trainer's single thread is restored
    assert [s.step for s in seen] == [2, 4, 6] and first.history == seen
    for (name, a), (_, b) in zip(
        first.model.named_parameters(), second.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    untrained = mechlab.load_model("toy:attn-only-2l").model
    assert not torch.equal(first.model.W_Q, untrained.W_Q)
    directory = first.save(tmp_path / "toy")
    assert (directory / "training.json").is_file()
    reloaded = mechlab.load_model(f"toy:{directory}").model
    tokens = mechlab.repeated_tokens(first.model, 2)
    torch.testing.assert_close(reloaded(tokens), first.model(tokens))


def test_trained_toy_has_the_induction_circuit(induction_toy: mechlab.TrainedToy) -> None:
    """REFERENCES.md: layer-1 induction heads, a layer-0 previous-token head, ablation collapses it."""
    model = induction_toy.model
    assert induction_toy.final_loss < 0.2
    report = run_detectors(model, ["induction", "previous-token", "copying"], n_samples=16)
    top = report["induction"].top(1)[0]
    assert top.layer == 1 and top.score >= 0.7 and top.verdict == "detected"
    prev = report["previous-token"].detected()
    assert prev and prev[0].layer == 0 and prev[0].score >= 0.5
    layer0 = report["induction"].scores[0]
    assert float(layer0.max()) < 0.05  # REFERENCES: layer-0 induction ≈ 0.002
    copying = report["copying"]  # induction heads copy what they attend to; the prev head does not
    assert float(copying.scores[top.layer, top.head]) > 0.9
    assert (top.layer, top.head) in {(row.layer, row.head) for row in copying.detected()}
    assert float(copying.scores[prev[0].layer, prev[0].head]) < 0.5

    def zero(act: torch.Tensor, site: Site) -> torch.Tensor:
        out = act.clone()
        out[site.index(act)] = 0.0
        return out

    with mechlab.hooked(model, {Site("z", prev[0].layer, prev[0].head): zero}):
        ablated = run_detectors(model, ["induction"], n_samples=16)["induction"]
    after = float(ablated.scores[top.layer, top.head])
    assert after < 0.3 and after < top.score / 3
    assert ablated.detected() == []


def test_negative_control_has_no_previous_token_or_induction_heads(
    positional_toy: mechlab.TrainedToy,
) -> None:
    """The fixed layout is solved by position: layer-0 heads hit the induction diagonal but are
    not called induction heads (they keep the score with the repeat broken), and no head is a
    previous-token head."""
    report = run_detectors(positional_toy.model, ["induction", "previous-token"], n_samples=16)
    assert report["previous-token"].detected() == []
    assert float(report["previous-token"].scores[0].max()) < 0.15
    induction = report["induction"]
    positional = [row for row in induction.rows() if row.verdict == "positional"]
    assert positional and positional[0].layer == 0 and positional[0].score > 0.5
    assert positional[0].control is not None and positional[0].control > 0.5
    assert induction.detected() == []
