"""Sweeps on a Ray cluster of two workers give the in-process numbers, result for result; a killed
worker's tasks run again elsewhere; a task that raises is reported with its inputs while the rest
completes; an interrupted capture resumes from its manifest; and a model the workers cannot load as
the driver holds it is refused."""

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import mechlab
from mechlab.executors.ray import Ray
from mechlab.interventions.inputs import Ablation
from mechlab.interventions.sweep import Sweep
from mechlab.probes.probes import fit_probes, train_probes
from tests.unit.detectors.test_detectors import FakeEntryPoint
from tests.unit.executors.test_sweeps import SITES, _inputs, _planted, _same, _shard_indices, letters
from tests.unit.test_generation import _CharModel

METRIC = mechlab.LogitDiff(3, 11)


def _same_patch(a: mechlab.PatchResult, b: mechlab.PatchResult) -> None:
    assert torch.equal(a.values, b.values) and torch.equal(a.per_prompt, b.per_prompt)
    assert torch.equal(a.clean, b.clean) and _same(a.corrupted, b.corrupted)
    assert a.sites == b.sites and a.mode == b.mode
    if a.corrupted is not None:  # the dataset-level view: mean change per cell with its interval
        assert all(torch.equal(x, y) for x, y in zip(a.delta_interval(), b.delta_interval(), strict=True))


@pytest.mark.parametrize("baseline", ["corrupted", "mean"])
def test_patching_gives_the_in_process_numbers_on_two_workers(cluster: Ray, tiny, pair, baseline) -> None:
    clean, corrupted = pair
    source: Any = Ablation("mean") if baseline == "mean" else corrupted
    seen: list[int] = []
    here = mechlab.patch(tiny.model, clean, source, "z", METRIC, batch_size=2)
    there = mechlab.patch(
        tiny.model,
        clean,
        source,
        "z",
        METRIC,
        batch_size=2,
        executor=cluster,
        progress=lambda s: seen.append(s.done),
    )
    _same_patch(here, there)
    assert seen == sorted(seen) and seen[-1] == 8 and len(seen) == 8  # one variant per task, 2 heads × 4
    assert float(here.values.abs().sum()) > 0


def test_path_patching_gives_the_in_process_numbers(cluster: Ray, tiny, pair) -> None:
    clean, corrupted = pair
    receivers = [mechlab.Site("q", 1, 0)]
    here = mechlab.path_patch(tiny.model, clean, corrupted, "z", receivers, METRIC, batch_size=2)
    there = mechlab.path_patch(
        tiny.model, clean, corrupted, "z", receivers, METRIC, batch_size=2, executor=cluster
    )
    _same_patch(here, there)


@pytest.mark.parametrize("baseline", ["corrupted", "mean"])
def test_attribution_patching_gives_the_in_process_numbers(cluster: Ray, tiny, pair, baseline) -> None:
    clean, corrupted = pair
    source: Any = Ablation("mean") if baseline == "mean" else corrupted
    here = mechlab.attribution_patch(tiny.model, clean, source, "z", METRIC)
    there = mechlab.attribution_patch(tiny.model, clean, source, "z", METRIC, executor=cluster)
    _same_patch(here, there)


def test_detectors_give_the_in_process_numbers(cluster: Ray, attn_only) -> None:
    names = ["induction", "previous-token", "copying"]
    here = mechlab.run_detectors(attn_only.model, names, n_samples=6, batch_size=2)
    there = mechlab.run_detectors(attn_only.model, names, n_samples=6, batch_size=2, executor=cluster)
    assert not here.failures and not there.failures
    for name in names:
        a, b = here[name], there[name]
        assert torch.equal(a.samples, b.samples) and torch.equal(a.baseline_samples, b.baseline_samples)
        assert _same(a.control_samples, b.control_samples) and _same(a.chance_samples, b.chance_samples)


def test_detectors_run_over_several_models(cluster: Ray, tiny, attn_only) -> None:
    # One pool of actors per model: the sweep on tiny replaces attn_only's actors.
    for loaded in (attn_only, tiny):
        here = mechlab.run_detectors(loaded.model, ["previous-token"], n_samples=4, batch_size=2)
        there = mechlab.run_detectors(
            loaded.model, ["previous-token"], n_samples=4, batch_size=2, executor=cluster
        )
        assert torch.equal(here["previous-token"].samples, there["previous-token"].samples)


def test_capture_dataset_shards_written_by_workers_match(cluster: Ray, tiny, tmp_path: Path) -> None:
    reference = mechlab.capture_dataset(tiny.model, _inputs(), SITES, tmp_path / "ref", batch_size=2)
    dataset = mechlab.capture_dataset(
        tiny.model, _inputs(), SITES, tmp_path / "ray", batch_size=2, executor=cluster
    )
    assert _shard_indices(tmp_path / "ray") == [0, 1, 2, 3] and dataset.complete and len(dataset) == 7
    for site in (*SITES, "tokens", "lengths"):
        assert torch.equal(dataset.stack(site), reference.stack(site))


def test_probes_give_the_in_process_numbers(cluster: Ray, tiny) -> None:
    features, labels, keys = _planted(3, 120, 8)
    here, there = fit_probes(features, labels, keys), fit_probes(features, labels, keys, executor=cluster)
    for field in ("accuracy", "control_accuracy", "train_accuracy", "weights", "biases", "projection_std"):
        assert torch.equal(getattr(here, field), getattr(there, field)), field
    assert float(there.accuracy[-1]) > 0.8
    # train_probes caches the activations here and fits each layer on a worker.
    model, data = _CharModel(tiny.model), letters()
    a = train_probes(model, data, batch_size=16)  # type: ignore[arg-type]
    b = train_probes(model, data, batch_size=16, executor=cluster)  # type: ignore[arg-type]
    assert torch.equal(a.accuracy, b.accuracy) and torch.equal(a.weights, b.weights)


def test_a_worker_killed_mid_sweep_has_its_tasks_rerun(cluster: Ray, tiny, pair) -> None:
    clean, corrupted = pair
    sweep = Sweep("z", per_position=True)  # 2 layers × 4 heads × 7 positions: 56 tasks
    here = mechlab.patch(tiny.model, clean, corrupted, sweep, METRIC, batch_size=2)
    mechlab.patch(tiny.model, clean, corrupted, "z", METRIC, batch_size=2, executor=cluster)  # the pool
    before = cluster.pids()
    assert len(before) == 2
    killed: list[int] = []

    def kill_one(state: Any) -> None:
        if not killed:
            os.kill(before[0], signal.SIGKILL)
            killed.append(before[0])

    retried = cluster.retries
    there = mechlab.patch(
        tiny.model, clean, corrupted, sweep, METRIC, batch_size=2, executor=cluster, progress=kill_one
    )
    _same_patch(here, there)
    assert cluster.retries > retried  # the killed actor's queued tasks ran again
    after = cluster.pids()
    assert len(after) == 2 and before[0] not in after and before[1] in after


def fails_on_three(x: int) -> int:
    """A task's work that raises for one input (module level, so workers import it)."""
    if x == 3:
        raise ValueError(f"cannot square {x}")
    return x * x


def test_a_task_that_raises_is_reported_with_its_inputs_and_the_rest_completes(cluster: Ray) -> None:
    arrived: dict[int, int] = {}
    with pytest.raises(mechlab.TaskError) as caught:
        cluster.map(fails_on_three, [0, 1, 2, 3, 4, 5], on_result=arrived.__setitem__)
    error = caught.value
    assert "1 of 6 tasks failed" in str(error)
    assert "task 3: ValueError: cannot square 3" in str(error) and "inputs: 3" in str(error)
    assert arrived == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
    assert error.results == [0, 1, 4, None, 16, 25]
    assert [(index, task) for index, task, _ in error.failures] == [(3, 3)]


class Interrupt(Exception):
    pass


def test_an_interrupted_capture_resumes_from_its_manifest(cluster: Ray, tiny, tmp_path: Path) -> None:
    reference = mechlab.capture_dataset(tiny.model, _inputs(), SITES, tmp_path / "ref", batch_size=2)
    run = tmp_path / "run"

    def stop_after_two(state: Any) -> None:
        if state.batches == 2:
            raise Interrupt  # the driver stops, as on Ctrl-C, with two shards recorded

    with pytest.raises(Interrupt):
        mechlab.capture_dataset(
            tiny.model, _inputs(), SITES, run, batch_size=2, executor=cluster, progress=stop_after_two
        )
    assert _shard_indices(run) == [0, 1]
    seen: list[int] = []
    resumed = mechlab.capture_dataset(
        tiny.model,
        _inputs(),
        SITES,
        run,
        batch_size=2,
        executor=cluster,
        progress=lambda s: seen.append(s.batches),
    )
    # Shards 2 and 3 are written again; the manifest records them in order, whichever lands first.
    assert seen in ([3, 4], [4]) and _shard_indices(run) == [0, 1, 2, 3]
    assert json.loads((run / "manifest.json").read_text())["complete"]
    for site in (*SITES, "tokens", "lengths"):
        assert torch.equal(resumed.stack(site), reference.stack(site))


def test_a_model_changed_after_loading_is_refused_by_the_workers(cluster: Ray, pair) -> None:
    clean, corrupted = pair
    model = mechlab.load_model("toy:tiny").model
    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # the workers would load the unchanged weights
    with pytest.raises(mechlab.TaskError, match="has other weights than the driver's model"):
        mechlab.patch(model, clean, corrupted, "z", METRIC, executor=cluster)


def test_a_model_not_from_load_model_is_refused_before_anything_runs(cluster: Ray, tiny, pair) -> None:
    import copy

    clean, corrupted = pair
    with pytest.raises(mechlab.InputError, match=r"was not returned by mechlab\.load_model"):
        mechlab.patch(copy.deepcopy(tiny.model), clean, corrupted, "z", METRIC, executor=cluster)


def _table(out: str) -> str:
    """The command's output without its timings (the load line, the seconds of the run)."""
    return re.sub(r"\d+\.\d s", "", out.split("\n", 1)[1])


def test_the_cli_runs_a_sweep_on_ray(cluster: Ray, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from mechlab.cli import main
    from mechlab.executors import base

    point = FakeEntryPoint("ray", "mechlab.executors.ray:Ray", None, lambda **kw: Ray(num_workers=2, **kw))
    registry = base.ExecutorRegistry.from_entry_points([point])
    monkeypatch.setattr(mechlab.ExecutorRegistry, "from_entry_points", classmethod(lambda cls: registry))
    cluster.release()  # the command's executor takes the two CPUs, and stops its actors when done
    args = ["detect", "toy:attn-only-2l", "--detector", "previous-token", "--samples", "4", "--top", "2"]
    assert main([*args, "--executor", "ray"]) == 0
    on_ray = _table(capsys.readouterr().out)
    assert main(args) == 0
    assert on_ray == _table(capsys.readouterr().out) and "previous-token" in on_ray
    assert main([*args, "--address", "auto"]) == 2  # --address without --executor ray
    assert "--address names a Ray cluster" in capsys.readouterr().err


@pytest.mark.smollm2
@pytest.mark.slow
def test_explain_prompts_writes_the_in_process_reports_on_two_workers(
    cluster: Ray, smollm2, tmp_path: Path
) -> None:
    settings = mechlab.ExplainSettings(max_new_tokens=2, ig_steps=8, detectors=(), top_heads=2)
    prompts = ["The capital of France is", "hello " * 9000]  # the second is longer than the context
    # A Ray worker computes with one torch thread; so does the reference here, since a matrix product
    # split over two threads sums in another order (SmolLM2's logit difference moved by 1e-6).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = mechlab.explain_prompts(smollm2, prompts, tmp_path / "here", settings=settings)
    finally:
        torch.set_num_threads(threads)
    there = mechlab.explain_prompts(smollm2, prompts, tmp_path / "there", settings=settings, executor=cluster)
    assert here == there
    assert here[0]["chosen"] == "' Paris'" and "error" in here[1] and "context" in here[1]["error"]
    index = (tmp_path / "there" / "index.html").read_text()
    assert 'href="prompt-0000.html"' in index and "1 failed" in index
    assert (tmp_path / "there" / "prompt-0000.html").is_file()
