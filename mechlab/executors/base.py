"""The ``Executor`` protocol and the registry of installed executors (``mechlab.executors``)."""

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from mechlab.errors import MSG_UNKNOWN_EXECUTOR, InputError
from mechlab.executors.in_process import InProcess
from mechlab.registry import Entry, EntryPointLike, scan

GROUP = "mechlab.executors"
DEFAULT = "in-process"
# Called as ``on_result(index, result)`` when the task at ``index`` has finished.
OnResult = Callable[[int, Any], None]


@runtime_checkable
class Executor(Protocol):
    """Runs independent tasks; returns their results in task order.

    Contract: ``work`` has no effect but its result; each task's result is reported once through
    ``on_result`` (in any order), and the returned list is in task order. ``tasks`` may be a lazy
    iterable: a sweep that streams its inputs (``capture_dataset``) makes each task as it is drawn,
    so an executor draws a task only when it can start it (the in-process loop: after the previous
    one's ``on_result``). The tasks of one sweep share the model and its hooks, so two of them never
    run at once in one process (no threads): an executor runs them in turn, or in other processes
    that hold their own copy of the model (then ``work`` and the tasks must be picklable).
    """

    name: str

    def map(
        self, work: Callable[[Any], Any], tasks: Iterable[Any], *, on_result: OnResult | None = None
    ) -> list[Any]: ...


@dataclasses.dataclass(frozen=True)
class ExecutorRegistry:
    """Installed executors by name; ``from_entry_points()`` reads the group."""

    entries: Mapping[str, Entry]
    conflicts: Mapping[str, tuple[Entry, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_entry_points(cls, entry_points: Iterable[EntryPointLike] | None = None) -> "ExecutorRegistry":
        entries, conflicts = scan(GROUP, entry_points)
        return cls(entries=entries, conflicts=conflicts)

    def names(self) -> list[str]:
        return sorted({*self.entries, *self.conflicts})

    def create(self, name: str, **options: Any) -> Executor:
        """The executor registered as ``name``, built with ``options``.

        Raises:
            InputError: no executor has that name, two packages register it, or it is no Executor.
        """
        if name in self.conflicts:
            providers = " and ".join(str(entry) for entry in self.conflicts[name])
            raise InputError(
                f"Two installed packages provide the executor {name!r}: {providers}. Uninstall one."
            )
        entry = self.entries.get(name)
        if entry is None:
            raise InputError(
                MSG_UNKNOWN_EXECUTOR.format(name=name, available=", ".join(self.names()) or "(none)")
            )
        executor = entry.loader()(**options)
        if not isinstance(executor, Executor):
            raise InputError(
                f"{entry} is registered as executor {name!r} but builds {executor!r}, no Executor."
            )
        return executor


def resolve_executor(executor: Any) -> Executor:
    """An executor from an instance, a registered name, or ``None`` (the in-process default).

    Raises:
        InputError: anything else, or a name no installed executor has.
    """
    if executor is None or executor == DEFAULT:
        return InProcess()
    if isinstance(executor, str):
        return ExecutorRegistry.from_entry_points().create(executor)
    if not isinstance(executor, Executor):
        raise InputError(
            f"executor must be an Executor (with a name and map(work, tasks, on_result=...)), a registered "
            f"executor's name, or None; got {type(executor).__name__}."
        )
    return executor
