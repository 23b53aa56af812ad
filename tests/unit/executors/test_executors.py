"""Executors are an extension point: a sweep gives the same numbers on any executor, whatever order
its tasks finish in, and an unknown executor is an error listing the installed ones."""

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

import mechlab
from mechlab.executors import Executor, ExecutorRegistry, InProcess, OnResult, resolve_executor
from tests.unit.detectors.test_detectors import FakeEntryPoint


class LastFirst:
    """A new executor in one class: runs the tasks last first and reports each as it finishes."""

    name = "last-first"

    def __init__(self, note: str = "") -> None:
        self.note = note
        self.order: list[int] = []

    def map(
        self, work: Callable[[Any], Any], tasks: Iterable[Any], *, on_result: OnResult | None = None
    ) -> list[Any]:
        tasks = list(tasks)  # a lazy sweep's tasks are all drawn before the last one can run
        results: list[Any] = [None] * len(tasks)
        for index in reversed(range(len(tasks))):
            results[index] = work(tasks[index])
            self.order.append(index)
            if on_result is not None:
                on_result(index, results[index])
        return results


def test_patching_gives_the_same_numbers_on_another_executor(tiny, pair) -> None:
    clean, corrupted = pair
    metric = mechlab.LogitDiff(3, 11)
    seen: list[tuple[int, int]] = []
    last_first = LastFirst()
    here = mechlab.patch(tiny.model, clean, corrupted, "z", metric, batch_size=2)
    there = mechlab.patch(
        tiny.model,
        clean,
        corrupted,
        "z",
        metric,
        batch_size=2,
        executor=last_first,
        progress=lambda state: seen.append((state.done, state.total)),
    )
    assert torch.equal(here.values, there.values) and torch.equal(here.per_prompt, there.per_prompt)
    assert len(last_first.order) > 1 and last_first.order != sorted(
        last_first.order
    )  # results arrived out of order
    assert seen[-1][0] == seen[-1][1] == here.values.numel()
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_the_default_is_the_in_process_loop_and_names_resolve() -> None:
    assert isinstance(resolve_executor(None), InProcess)
    assert isinstance(resolve_executor("in-process"), InProcess)
    assert isinstance(InProcess(), Executor) and isinstance(LastFirst(), Executor)
    assert "in-process" in ExecutorRegistry.from_entry_points().names()
    got: list[tuple[int, int]] = []
    assert InProcess().map(lambda x: x * x, [1, 2, 3], on_result=lambda i, r: got.append((i, r))) == [1, 4, 9]
    assert got == [(0, 1), (1, 4), (2, 9)]


def test_an_executor_registered_as_an_entry_point_is_found_by_name() -> None:
    point = FakeEntryPoint("last-first", "tests:LastFirst", None, LastFirst)
    registry = ExecutorRegistry.from_entry_points([point])
    assert isinstance(registry.create("last-first", note="x"), LastFirst)
    with pytest.raises(
        mechlab.InputError,
        match=r"No executor is registered as 'ray'\. Installed executors: last-first",
    ):
        registry.create("ray")
    with pytest.raises(mechlab.InputError, match="executor must be an Executor"):
        resolve_executor(42)  # type: ignore[arg-type]
