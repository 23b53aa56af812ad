"""The default executor: every task in this process, one after another, in order."""

from collections.abc import Callable, Iterable
from typing import Any


class InProcess:
    """Runs ``work(task)`` for each task here, in order (today's loop)."""

    name = "in-process"

    def map(
        self,
        work: Callable[[Any], Any],
        tasks: Iterable[Any],
        *,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        results = []
        for index, task in enumerate(tasks):
            result = work(task)
            results.append(result)
            if on_result is not None:
                on_result(index, result)
        return results
