"""Toy training: the data, the trainer's contract, and the circuits the trained models contain."""

from pathlib import Path

import pytest
import torch
from jaxtyping import TypeCheckError

import mechlab
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
    # Under the tests' runtime type checks the Literal annotation refuses it first; without them,
    # __post_init__ raises ValueError("layout must be one of ...").
    with pytest.raises((ValueError, TypeCheckError), match="layout"):
        mechlab.ToyTrainConfig(layout="shifted")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        mechlab.ToyTrainConfig(steps=0)
    with pytest.raises(ValueError, match="does not fit twice"):
        mechlab.ToyTrainConfig(min_repeat=40)  # checked when the config is made
    with pytest.raises(ValueError, match="log_every must be a positive number of steps; got 0"):
        mechlab.train_induction_toy(mechlab.ToyTrainConfig(steps=1), log_every=0)
    with pytest.raises(ValueError, match="cpu_threads must be a positive integer or None"):
        mechlab.train_induction_toy(mechlab.ToyTrainConfig(steps=1), cpu_threads=0)


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


def test_cached_toy_trains_once_then_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mechlab.toy import cache

    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path))
    config = mechlab.ToyTrainConfig(steps=3, batch_size=4)
    trained = cache.cached_induction_toy(config)
    directory = cache.toy_cache_dir(config)
    assert directory.parent == tmp_path / "toys" and (directory / "training.json").is_file()
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]  # no temporary left

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again despite a cached checkpoint")

    monkeypatch.setattr(cache, "train_induction_toy", no_training)
    loaded = cache.cached_induction_toy(config)
    assert loaded.history == trained.history and loaded.config == config
    tokens = mechlab.repeated_tokens(trained.model, 2)
    torch.testing.assert_close(loaded.model(tokens), trained.model(tokens))
    # Another config, or other code, is another key.
    assert cache.toy_cache_key(mechlab.ToyTrainConfig(steps=4, batch_size=4)) != directory.name
    monkeypatch.setattr(cache, "_SOURCES", cache._SOURCES[1:])
    assert cache.toy_cache_key(config) != directory.name
