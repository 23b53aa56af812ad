"""The detector registry: every detector installed under the entry-point group ``mechlab.detectors``.

A package provides detectors by declaring entry points in its ``pyproject.toml``::

    [project.entry-points."mechlab.detectors"]
    local-window = "my_package.detectors:LocalWindowDetector"

mechlab's built-ins are declared the same way. The registry is a value, built when asked for
(``DetectorRegistry.from_entry_points()``); nothing is registered at import time and nothing
global changes. ``with_detectors`` returns a new registry that also holds classes defined in the
current session (a notebook, a test), without packaging them.

Two distributions that register the same name are an error naming both; so is an unknown name
(the error lists what is installed). Entry points are loaded only when a detector is created, so
a broken plugin breaks only itself.
"""

import dataclasses
import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from mechlab.detectors.base import Detector
from mechlab.errors import (
    MSG_DUPLICATE_DETECTOR,
    MSG_UNKNOWN_DETECTOR,
    DetectorPluginError,
    DuplicateDetectorError,
    UnknownDetectorError,
)

GROUP = "mechlab.detectors"
IN_PROCESS = "(defined in this session)"


@runtime_checkable
class EntryPointLike(Protocol):
    """What the registry reads from an ``importlib.metadata.EntryPoint``."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def dist(self) -> Any: ...

    def load(self) -> Any: ...


@dataclasses.dataclass(frozen=True)
class DetectorEntry:
    """One registered detector: its name, the distribution that provides it, and where it lives."""

    name: str
    provider: str
    target: str
    loader: Callable[[], Any] = dataclasses.field(repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.provider} ({self.target})"


@dataclasses.dataclass(frozen=True)
class DetectorRegistry:
    """Installed detectors by name. Build one with ``from_entry_points()``."""

    entries: Mapping[str, DetectorEntry]

    @classmethod
    def from_entry_points(cls, entry_points: Iterable[EntryPointLike] | None = None) -> "DetectorRegistry":
        """The detectors registered under ``mechlab.detectors`` (or the given entry points).

        Raises:
            DuplicateDetectorError: two distributions register the same name.
        """
        found = importlib.metadata.entry_points(group=GROUP) if entry_points is None else entry_points
        entries: dict[str, DetectorEntry] = {}
        for point in found:
            dist = point.dist
            entry = DetectorEntry(
                name=point.name,
                provider=str(dist.name) if dist is not None else "(unknown distribution)",
                target=point.value,
                loader=point.load,
            )
            _add(entries, entry)
        return cls(entries=dict(sorted(entries.items())))

    def with_detectors(self, *classes: type[Detector], provider: str = IN_PROCESS) -> "DetectorRegistry":
        """A new registry that also holds ``classes`` (e.g. detectors written in a notebook)."""
        entries = dict(self.entries)
        for cls in classes:
            _check_class(cls, f"{cls.__module__}:{cls.__qualname__}", provider)
            target = f"{cls.__module__}:{cls.__qualname__}"
            _add(entries, DetectorEntry(cls.name, provider, target, loader=_returning(cls)))
        return DetectorRegistry(entries=dict(sorted(entries.items())))

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def entry(self, name: str) -> DetectorEntry:
        """The entry for ``name``; ``UnknownDetectorError`` listing the installed names if none."""
        try:
            return self.entries[name]
        except KeyError:
            available = ", ".join(self.entries) or "(none)"
            raise UnknownDetectorError(MSG_UNKNOWN_DETECTOR.format(name=name, available=available)) from None

    def create(self, name: str) -> Detector:
        """Load the detector class registered as ``name`` and instantiate it.

        Raises:
            UnknownDetectorError: no detector has that name.
            DetectorPluginError: the plugin cannot be imported, is not a Detector subclass, or its
                ``name`` differs from the entry-point name.
        """
        entry = self.entry(name)
        try:
            cls = entry.loader()
        except Exception as error:
            raise DetectorPluginError(
                f"Detector {name!r} from {entry} could not be loaded: {type(error).__name__}: "
                f"{error}. Reinstall {entry.provider}, or uninstall it to silence this detector."
            ) from error
        _check_class(cls, entry.target, entry.provider, expected_name=name)
        return cls()


def _returning(cls: type[Detector]) -> Callable[[], type[Detector]]:
    def load() -> type[Detector]:
        return cls

    return load


def _add(entries: dict[str, DetectorEntry], entry: DetectorEntry) -> None:
    existing = entries.get(entry.name)
    if existing is not None and (existing.provider, existing.target) != (entry.provider, entry.target):
        raise DuplicateDetectorError(
            MSG_DUPLICATE_DETECTOR.format(name=entry.name, first=existing, second=entry)
        )
    entries[entry.name] = entry


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
    missing_attrs = [a for a in ("name", "description", "reads") if getattr(cls, a, None) is None]
    if missing_attrs:
        raise DetectorPluginError(
            f"{target} (from {provider}) does not set {', '.join(missing_attrs)}: every detector "
            "class declares name, description and reads (see mechlab.Detector)."
        )
    if expected_name is not None and cls.name != expected_name:
        raise DetectorPluginError(
            f"{target} (from {provider}) is registered as {expected_name!r} but its name attribute "
            f"is {cls.name!r}. Make the entry-point name and the class's name agree."
        )
