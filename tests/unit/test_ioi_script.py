"""The IOI script's own logic (dataset, role bookkeeping) on stand-ins; the script itself runs on
SmolLM2 in tests/integration."""

import re

import pytest
import torch

import mechlab
from circuits import ioi
from mechlab import LogitDiff, Site, Sweep


class _Words:
    """A stand-in tokenizer: every word (with its leading space) and punctuation mark is one token;
    with ``split_names`` every name splits into its letters instead."""

    def __init__(self, split_names: bool = False) -> None:
        self.split_names = split_names
        self.vocab: dict[str, int] = {}

    def _pieces(self, text: str) -> list[str]:
        pieces = re.findall(r" ?\w+|[^\w\s]", text)
        if self.split_names:
            pieces = [c for p in pieces for c in ([p] if p.strip() not in ioi.NAMES else list(p))]
        return pieces

    def to_tokens(self, text: str) -> torch.Tensor:
        return torch.tensor([[self.vocab.setdefault(p, len(self.vocab)) for p in self._pieces(text)]])

    def to_single_token(self, text: str) -> int:
        (token,) = self.to_tokens(text)[0].tolist()
        return int(token)


def test_the_corruption_replaces_the_second_subject_only() -> None:
    model = _Words()
    data = ioi.make_dataset(model, ioi.TEMPLATES[1], 6, seed=0)
    assert len(data["prompts"]) == 6 and data["clean"].shape == data["corrupted"].shape
    where = ioi.positions(data)
    for clean, corrupted, row, crow in zip(
        data["prompts"], data["corrupted_prompts"], data["clean"], data["corrupted"], strict=True
    ):
        differs = (row != crow).nonzero().flatten().tolist()
        assert differs == [where["S2"]]  # only the second S changed
        assert clean.split(",")[0] == corrupted.split(",")[0]  # IO and S1 untouched
    assert where["S1"] < where["S2"] < where["END"] and where["IO"] != where["S1"]


def test_a_dataset_with_no_pairs_is_an_error() -> None:
    with pytest.raises(mechlab.InputError, match=r"0 of 32 names.* single tokens"):
        ioi.make_dataset(_Words(split_names=True), ioi.TEMPLATES[0], 4, seed=0)


def test_below_is_none_for_layer_zero() -> None:
    assert ioi.below([Site("z", 0, 1), Site("z", 3, 0)]) is None
    sweep = ioi.below([Site("z", 5, 1), Site("z", 3, 0)])
    assert sweep is not None and sweep.layers == (0, 1, 2)


def test_roles_read_each_sweep_by_its_layer_labels(tiny) -> None:
    generator = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 50, (2, 6), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 3) % 50
    metric = LogitDiff(1, 2)
    heads = mechlab.patch(tiny.model, clean, corrupted, "z", metric)
    late = mechlab.patch(tiny.model, clean, corrupted, Sweep("z", layers=(1,)), metric)
    found = ioi.assign_roles({"head_patching": heads, "path_to_mover_queries": late})
    assert found, "the tiny model has heads above the threshold"
    for name, info in found.items():
        layer, head = (int(x) for x in name.split("."))
        assert info["head_patching"] == round(float(heads.effect[layer, head]), 4)
        if layer == 1:
            assert info["path_to_mover_queries"] == round(float(late.effect[0, head]), 4)
        else:  # layer 0 is not in that sweep: no score, rather than layer 1's
            assert "path_to_mover_queries" not in info
