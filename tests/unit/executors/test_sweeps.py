"""Every sweep runs through its executor: attribution patching, the detectors, capture_dataset and
the probes give the same numbers when their tasks run last first as in the in-process loop, and a
capture interrupted with shards written out of order resumes to the same files."""

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

import mechlab
from mechlab.executors import OnResult
from mechlab.interventions.inputs import Ablation
from mechlab.probes.data import ProbeDataset
from mechlab.probes.probes import fit_probes, train_probes
from tests.unit.executors.test_executors import LastFirst
from tests.unit.test_generation import _CharModel

SITES = ["resid_post.0", "z.1.0"]


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize(("direction", "n_tasks"), [("denoise", 2), ("noise", 2), ("mean", 1)])
def test_attribution_patching_runs_its_passes_as_tasks(tiny, pair, direction: str, n_tasks: int) -> None:
    clean, corrupted = pair
    baseline: Any = Ablation("mean") if direction == "mean" else corrupted
    chosen = None if direction == "mean" else direction
    metric = mechlab.LogitDiff(3, 11)
    last_first = LastFirst()
    here = mechlab.attribution_patch(tiny.model, clean, baseline, "z", metric, direction=chosen)
    there = mechlab.attribution_patch(
        tiny.model, clean, baseline, "z", metric, direction=chosen, executor=last_first
    )
    assert last_first.order == list(reversed(range(n_tasks)))  # the source pass ran first
    assert torch.equal(here.values, there.values) and torch.equal(here.per_prompt, there.per_prompt)
    assert torch.equal(here.clean, there.clean)
    assert _same(here.corrupted, there.corrupted)


def test_detectors_score_each_batch_as_a_task(attn_only) -> None:
    names = ["induction", "previous-token", "copying"]  # copying reads the weights: one task of its own
    seen: dict[str, list[tuple[int, int | None]]] = {"here": [], "there": []}
    last_first = LastFirst()
    here = mechlab.run_detectors(
        attn_only.model,
        names,
        n_samples=6,
        batch_size=2,
        progress=lambda s: seen["here"].append((s.done, s.total)),
    )
    there = mechlab.run_detectors(
        attn_only.model,
        names,
        n_samples=6,
        batch_size=2,
        executor=last_first,
        progress=lambda s: seen["there"].append((s.done, s.total)),
    )
    assert last_first.order == [3, 2, 1, 0]  # three batches of two sequences, then copying
    assert seen["here"] == seen["there"] == [(2, 6), (4, 6), (6, 6)]
    assert not here.failures and not there.failures
    for name in names:
        a, b = here[name], there[name]
        assert torch.equal(a.samples, b.samples) and torch.equal(a.baseline_samples, b.baseline_samples)
        assert _same(a.control_samples, b.control_samples) and _same(a.chance_samples, b.chance_samples)
    # Each batch draws its baselines from its own stream: the first batch is the whole of a 2-sample run.
    first = mechlab.run_detectors(attn_only.model, ["induction"], n_samples=2, batch_size=2)["induction"]
    assert torch.equal(here["induction"].baseline_samples[:2], first.baseline_samples)
    assert torch.equal(here["induction"].samples[:2], first.samples)


def _inputs() -> torch.Tensor:
    return torch.randint(0, 50, (7, 6), generator=torch.Generator().manual_seed(5))


def _shard_indices(directory: Path) -> list[int]:
    return [s["index"] for s in json.loads((directory / "manifest.json").read_text())["shards"]]


def test_capture_dataset_writes_each_shard_as_a_task(tiny, tmp_path: Path) -> None:
    last_first = LastFirst()
    seen: list[int] = []
    reference = mechlab.capture_dataset(tiny.model, _inputs(), SITES, tmp_path / "ref", batch_size=2)
    dataset = mechlab.capture_dataset(
        tiny.model,
        _inputs(),
        SITES,
        tmp_path / "run",
        batch_size=2,
        executor=last_first,
        progress=lambda state: seen.append(state.batches),
    )
    assert last_first.order == [3, 2, 1, 0]
    assert seen == [4]  # shards 3, 2, 1 waited for shard 0 before the manifest recorded them
    assert _shard_indices(tmp_path / "run") == [0, 1, 2, 3] and dataset.complete and len(dataset) == 7
    for site in (*SITES, "tokens", "lengths"):
        assert torch.equal(dataset.stack(site), reference.stack(site))


class Stopped(Exception):
    pass


class Scripted:
    """Runs the tasks in ``order`` and stops, as a killed worker pool would, after ``stop_after``."""

    name = "scripted"

    def __init__(self, order: Sequence[int], stop_after: int) -> None:
        self.order, self.stop_after = list(order), stop_after

    def map(
        self, work: Callable[[Any], Any], tasks: Iterable[Any], *, on_result: OnResult | None = None
    ) -> list[Any]:
        tasks = list(tasks)
        results: list[Any] = [None] * len(tasks)
        for count, index in enumerate(self.order):
            if count == self.stop_after:
                raise Stopped
            results[index] = work(tasks[index])
            if on_result is not None:
                on_result(index, results[index])
        return results


def test_a_capture_stopped_with_shards_out_of_order_resumes(tiny, tmp_path: Path) -> None:
    reference = mechlab.capture_dataset(tiny.model, _inputs(), SITES, tmp_path / "ref", batch_size=2)
    run = tmp_path / "run"
    with pytest.raises(Stopped):
        mechlab.capture_dataset(
            tiny.model, _inputs(), SITES, run, batch_size=2, executor=Scripted([0, 3, 2, 1], 3)
        )
    assert _shard_indices(run) == [0]  # shards 3 and 2 are on disk but wait for shard 1
    assert (run / "shard-000003.safetensors").exists()
    seen: list[int] = []
    resumed = mechlab.capture_dataset(
        tiny.model, _inputs(), SITES, run, batch_size=2, progress=lambda s: seen.append(s.batches)
    )
    assert seen == [2, 3, 4] and _shard_indices(run) == [0, 1, 2, 3]
    for site in (*SITES, "tokens", "lengths"):
        assert torch.equal(resumed.stack(site), reference.stack(site))


def _planted(n_layers: int, n: int, d: int) -> tuple[torch.Tensor, tuple[str, ...], tuple[str, ...]]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=generator)
    features = torch.randn(n_layers, n, d, generator=generator)
    features[-1, :, 0] += 2 * labels  # the last layer holds the label along its first axis
    return features, tuple("ab"[int(y)] for y in labels), tuple(f"w{i % 20}" for i in range(n))


def test_probes_fit_each_layer_as_a_task() -> None:
    features, labels, keys = _planted(3, 120, 8)
    last_first = LastFirst()
    here = fit_probes(features, labels, keys)
    there = fit_probes(features, labels, keys, executor=last_first)
    assert last_first.order == [2, 1, 0]
    for field in ("accuracy", "control_accuracy", "train_accuracy", "weights", "biases", "projection_std"):
        assert torch.equal(getattr(here, field), getattr(there, field)), field
    assert float(here.accuracy[-1]) > 0.8 and abs(float(here.accuracy[0]) - 0.5) < 0.2


def letters() -> ProbeDataset:
    """48 random 5-letter texts labelled by whether the last letter is before "n"."""
    generator = torch.Generator().manual_seed(3)
    texts = [
        "".join(chr(ord("a") + int(i)) for i in torch.randint(0, 26, (5,), generator=generator))
        for _ in range(48)
    ]
    return ProbeDataset.from_lists(texts, ["early" if t[-1] < "n" else "late" for t in texts])


def test_train_probes_hands_its_executor_to_the_fits(tiny) -> None:
    model = _CharModel(tiny.model)
    data = letters()
    last_first = LastFirst()
    here = train_probes(model, data, batch_size=16)  # type: ignore[arg-type]
    there = train_probes(model, data, batch_size=16, executor=last_first)  # type: ignore[arg-type]
    assert last_first.order == [1, 0]  # toy:tiny's two layers
    assert torch.equal(here.accuracy, there.accuracy) and torch.equal(here.weights, there.weights)
