"""Directions from paired activations: a planted difference is found, separation is measured on
pairs not used to find it, and pairs files are checked."""

import json
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.directions import Direction, Pairs, Separation, from_activations, load_direction, separation
from mechlab.sites import Site


def _planted(n: int = 200, d: int = 16, shift: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    planted = torch.randn(d, generator=g)
    planted /= planted.norm()
    base = 3 * torch.randn(n, d, generator=g)  # what both prompts of a pair share
    positive = base + shift * planted + 0.3 * torch.randn(n, d, generator=g)
    negative = base + 0.3 * torch.randn(n, d, generator=g)
    return positive, negative, planted


@pytest.mark.parametrize("method", ["mean", "pca"])
def test_a_planted_difference_is_found(method: str) -> None:
    positive, negative, planted = _planted()
    unit, spread, gap = from_activations(positive, negative, method=method)
    assert float(unit.norm()) == pytest.approx(1.0, abs=1e-6)
    assert float(unit @ planted) > 0.98  # signed: from negative toward positive
    assert gap == pytest.approx(2.0, abs=0.1)
    # σ: the spread of every activation along u (the shared part, 3 per axis, dominates).
    assert 2.5 < spread < 3.5


def test_separation_counts_pairs_on_the_right_side() -> None:
    positive, negative, planted = _planted(seed=1)
    found = separation(planted, positive, negative)
    # Every pair lands the right way round, though the shared part (σ 3) dwarfs the gap of 2.
    assert found.n == 200 and found.accuracy > 0.99 and found.effect_size == pytest.approx(2 / 3, abs=0.1)
    reverse = separation(-planted, positive, negative)
    assert reverse.accuracy < 0.01 and reverse.effect_size == pytest.approx(-found.effect_size)
    orthogonal = torch.zeros(16)
    orthogonal[int(planted.abs().argmin())] = 1.0
    assert abs(separation(orthogonal, positive, negative).effect_size) < 0.2


def test_pairs_that_do_not_differ_give_no_direction() -> None:
    same = torch.randn(5, 8)
    with pytest.raises(mechlab.InputError, match="do not differ"):
        from_activations(same, same.clone())


def test_pairs_split_is_seeded_and_disjoint() -> None:
    pairs = Pairs(tuple(f"p{i}" for i in range(12)), tuple(f"n{i}" for i in range(12)), name="demo")
    train, test = pairs.split(0.25, seed=3)
    assert len(train) == 9 and len(test) == 3
    assert set(train.positive).isdisjoint(test.positive)
    assert [p.replace("p", "n") for p in test.positive] == list(test.negative)
    assert pairs.split(0.25, seed=3) == (train, test) and pairs.split(0.25, seed=4) != (train, test)
    with pytest.raises(ValueError, match="in pairs"):
        Pairs(("a", "b"), ("c",))


def test_pairs_files_are_read_and_bad_lines_named(tmp_path: Path) -> None:
    good = tmp_path / "pairs.jsonl"
    good.write_text(
        "\n".join(json.dumps({"positive": f"a{i}", "negative": f"b{i}"}) for i in range(3)) + "\n"
    )
    pairs = mechlab.load_pairs(good)
    assert pairs.positive == ("a0", "a1", "a2") and pairs.name == "pairs.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\n{"positive": "c"}\n')
    with pytest.raises(mechlab.InputError, match=r"line 2: expected"):
        mechlab.load_pairs(bad)
    with pytest.raises(mechlab.InputError, match="Cannot read pairs"):
        mechlab.load_pairs(tmp_path / "missing.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"positive": "caf\xe9", "negative": "b"}\n')
    with pytest.raises(mechlab.InputError, match=r"Pairs file .*latin.jsonl is not UTF-8 text \(byte 17"):
        mechlab.load_pairs(latin)


def test_a_direction_survives_a_round_trip(tmp_path: Path) -> None:
    direction = Direction(
        vector=torch.tensor([0.6, 0.8]),
        site=Site("resid_post", 7),
        method="mean",
        spread=1.25,
        gap=2.5,
        separation=Separation(n=10, accuracy=0.9, effect_size=1.5),
        source="pairs.jsonl",
    )
    back = load_direction(direction.save(tmp_path / "d.safetensors"))
    assert torch.equal(back.vector, direction.vector) and back.site == Site("resid_post", 7)
    assert (back.spread, back.gap, back.separation, back.source) == (
        1.25,
        2.5,
        direction.separation,
        "pairs.jsonl",
    )
    assert "2.00σ" in back.summary() and "90%" in back.summary()
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(mechlab.InputError, match="Cannot read a direction"):
        load_direction(tmp_path / "junk.safetensors")
