"""Extension points as values: what a group of entry points provides, clashes recorded, nothing global.

mechlab's extension points are entry-point groups (``mechlab.detectors``, ``mechlab.sources``). A
package provides an extension by declaring an entry point in its ``pyproject.toml``; mechlab's own
built-ins are declared the same way. ``scan`` reads a group into entries by name and the names two
distributions both claim (such a name is unusable, and the error names both providers). Entry points
are loaded only when used, so a broken plugin breaks only itself.
"""

import dataclasses
import importlib.metadata
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EntryPointLike(Protocol):
    """What a registry reads from an ``importlib.metadata.EntryPoint``."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def dist(self) -> Any: ...

    def load(self) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered extension: its name, the distribution that provides it, and where it lives."""

    name: str
    provider: str
    target: str
    loader: Callable[[], Any] = dataclasses.field(repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.provider} ({self.target})"


def same(first: Entry, second: Entry) -> bool:
    """The same distribution seen twice (e.g. on two sys.path entries) is not a clash."""
    return (first.provider, first.target) == (second.provider, second.target)


def scan(
    group: str, entry_points: Iterable[EntryPointLike] | None = None
) -> tuple[dict[str, Entry], dict[str, tuple[Entry, ...]]]:
    """``(entries, conflicts)`` of an entry-point group (or of the given entry points), by name.

    ``conflicts`` maps each name two or more distributions register to all their entries; those names
    are absent from ``entries``. Never raises.
    """
    found = importlib.metadata.entry_points(group=group) if entry_points is None else entry_points
    entries: dict[str, Entry] = {}
    conflicts: dict[str, tuple[Entry, ...]] = {}
    for point in found:
        dist = point.dist
        entry = Entry(
            name=point.name,
            provider=str(dist.name) if dist is not None else "(unknown distribution)",
            target=point.value,
            loader=point.load,
        )
        known = conflicts.get(entry.name) or ((entries[entry.name],) if entry.name in entries else ())
        if not known or any(same(entry, other) for other in known):
            entries.setdefault(entry.name, entry)
            continue
        conflicts[entry.name] = (*known, entry)
    usable = {name: entry for name, entry in sorted(entries.items()) if name not in conflicts}
    return usable, dict(sorted(conflicts.items()))
