"""The detector registry: every detector installed under the entry-point group ``mechlab.detectors``.

A package provides detectors by declaring entry points in its ``pyproject.toml``::

    [project.entry-points."mechlab.detectors"]
    local-window = "my_package.detectors:LocalWindowDetector"

mechlab's built-ins are declared the same way. The registry is a value, built when asked for
(``DetectorRegistry.from_entry_points()``); nothing is registered at import time and nothing
global changes. ``with_detectors`` returns a new registry that also holds classes defined in the
current session (a notebook, a test), without packaging them.

Two distributions that register the same name make that name unusable: asking for it raises an
error naming both (the other detectors stay available, and ``mechlab detectors`` shows the clash).
An unknown name is an error listing what is installed. Entry points are loaded only when a
detector is created, so a broken plugin breaks only itself.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mechlab.detectors.base import Detector, detector_problems
from mechlab.errors import (
    MSG_DETECTOR_CLASS,
    MSG_DUPLICATE_DETECTOR,
    MSG_UNKNOWN_DETECTOR,
    DetectorPluginError,
    DuplicateDetectorError,
    UnknownDetectorError,
)
from mechlab.registry import Entry, EntryPointLike, same, scan

GROUP = "mechlab.detectors"
IN_PROCESS = "(defined in this session)"


# A registered detector (``mechlab.registry.Entry``).
DetectorEntry = Entry


@dataclasses.dataclass(frozen=True)
class DetectorRegistry:
    """Installed detectors by name. Build one with ``from_entry_points()``.

    ``conflicts`` maps each name two or more distributions register to all their entries; such a
    name is listed by ``names()``, but ``entry`` and ``create`` raise ``DuplicateDetectorError``.
    """

    entries: Mapping[str, DetectorEntry]
    conflicts: Mapping[str, tuple[DetectorEntry, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_entry_points(cls, entry_points: Iterable[EntryPointLike] | None = None) -> "DetectorRegistry":
        """The detectors registered under ``mechlab.detectors`` (or the given entry points).

        Never raises for a name clash: the clashing name is recorded in ``conflicts``.
        """
        entries, conflicts = scan(GROUP, entry_points)
        return cls(entries=entries, conflicts=conflicts)

    def with_detectors(self, *classes: type[Detector], provider: str = IN_PROCESS) -> "DetectorRegistry":
        """A new registry that also holds ``classes`` (e.g. detectors written in a notebook).

        Raises:
            DuplicateDetectorError: a class's name is already registered by something else.
            DetectorPluginError: a class is not a concrete, well-formed Detector subclass.
        """
        entries = dict(self.entries)
        for cls in classes:
            target = f"{cls.__module__}:{cls.__qualname__}"
            _check_class(cls, target, provider)
            entry = DetectorEntry(cls.name, provider, target, loader=_returning(cls))
            if cls.name in self.conflicts:
                raise _duplicate(cls.name, (*self.conflicts[cls.name], entry))
            existing = entries.get(cls.name)
            if existing is not None and not same(existing, entry):
                raise _duplicate(cls.name, (existing, entry))
            entries[cls.name] = entry
        return DetectorRegistry(entries=dict(sorted(entries.items())), conflicts=self.conflicts)

    def names(self) -> list[str]:
        """Every registered name (clashing names included), sorted."""
        return sorted({*self.entries, *self.conflicts})

    def __contains__(self, name: object) -> bool:
        return name in self.entries or name in self.conflicts

    def entry(self, name: str) -> DetectorEntry:
        """The entry for ``name``.

        Raises:
            UnknownDetectorError: nothing is registered as ``name`` (the message lists what is).
            DuplicateDetectorError: two distributions register ``name`` (the message names both).
        """
        if name in self.conflicts:
            raise _duplicate(name, self.conflicts[name])
        try:
            return self.entries[name]
        except KeyError:
            available = ", ".join(self.names()) or "(none)"
            raise UnknownDetectorError(MSG_UNKNOWN_DETECTOR.format(name=name, available=available)) from None

    def create(self, name: str) -> Detector:
        """Load the detector class registered as ``name`` and instantiate it.

        Raises:
            UnknownDetectorError: no detector has that name.
            DuplicateDetectorError: two distributions register that name.
            DetectorPluginError: the plugin cannot be imported, is not a Detector subclass, its
                ``name`` differs from the entry-point name, or its constructor raises.
        """
        entry = self.entry(name)
        try:
            cls = entry.loader()
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a plugin's SystemExit is its failure, not the program's
            raise DetectorPluginError(
                f"Detector {name!r} from {entry} could not be loaded: {type(error).__name__}: "
                f"{error}. Reinstall {entry.provider}, or uninstall it to silence this detector."
            ) from error
        _check_class(cls, entry.target, entry.provider, expected_name=name)
        try:
            return cls()
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # a plugin's SystemExit is its failure, not the program's
            raise DetectorPluginError(
                f"Detector {name!r} from {entry} raised {type(error).__name__} while being created: "
                f"{error}. Its class must be constructible with no arguments; report this to "
                f"{entry.provider}'s authors, or uninstall it to silence this detector."
            ) from error


def _returning(cls: type[Detector]) -> Callable[[], type[Detector]]:
    def load() -> type[Detector]:
        return cls

    return load


def _duplicate(name: str, entries: tuple[DetectorEntry, ...]) -> DuplicateDetectorError:
    return DuplicateDetectorError(
        MSG_DUPLICATE_DETECTOR.format(
            name=name, first=entries[0], second=" and ".join(str(entry) for entry in entries[1:])
        )
    )


def _check_class(cls: Any, target: str, provider: str, expected_name: str | None = None) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise DetectorPluginError(
            f"{target} (from {provider}) is registered as a detector but is {cls!r}, not a subclass "
            "of mechlab.Detector. Point the entry point at a Detector subclass."
        )
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise DetectorPluginError(
            f"{target} (from {provider}) is abstract: it does not implement {missing}. "
            "Subclass PatternDetector and define expected_pattern, or WeightDetector and define "
            "weight_scores and null_scores."
        )
    check_detector(cls, target, provider)
    if expected_name is not None and cls.name != expected_name:
        raise DetectorPluginError(
            f"{target} (from {provider}) is registered as {expected_name!r} but its name attribute "
            f"is {cls.name!r}. Make the entry-point name and the class's name agree."
        )


def check_detector(detector: Any, target: str, provider: str) -> None:
    """Raise ``DetectorPluginError`` if a detector class or instance declares bad attributes."""
    problems = detector_problems(detector)
    if problems:
        raise DetectorPluginError(
            MSG_DETECTOR_CLASS.format(target=target, provider=provider, problems=problems)
        )
