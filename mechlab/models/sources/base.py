"""The ``Source`` contract and the registry of installed sources (``mechlab.sources`` entry points)."""

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch

from mechlab.errors import (
    MSG_DUPLICATE_SOURCE,
    MSG_PATH_MISSING,
    MSG_SOURCES_CLAIM,
    MSG_SYMLINK_LOOP,
    MSG_UNKNOWN_SOURCE,
    DuplicateSourceError,
    ModelNotFoundError,
    SourceError,
    SourcePluginError,
)
from mechlab.files import kind
from mechlab.models.info import ModelInfo
from mechlab.registry import Entry, EntryPointLike, scan

GROUP = "mechlab.sources"
IN_PROCESS = "(defined in this session)"
Status = Callable[[str], None]


class Resolved(NamedTuple):
    """A source string understood: the scheme of the source that loads it, and what it loads."""

    scheme: str
    target: str


class Source:
    """One place models come from.

    Class attributes:
        scheme: the prefix before ``:`` (``gguf``); also the entry-point name.
        forms: lines for the "Expected one of" list of an unknown source (``FORM   what it is``).
        priority: when several sources claim a bare string, the lowest priority takes it (the Hub,
            which claims any name, is the fallback at 90); two claimants at the same priority clash.

    A source may claim bare strings (``claims``), may hand a resolved string on to another source
    (``resolve``: ``ollama:NAME`` resolves to the ``gguf`` blob it names), and loads what it resolved
    (``load``).
    """

    scheme: ClassVar[str]
    forms: ClassVar[tuple[str, ...]] = ()
    priority: ClassVar[int] = 50

    def claims(self, text: str) -> bool:
        """Whether a string without a scheme is this source's (``model.gguf``: an existing file)."""
        return False

    def resolve(self, rest: str) -> Resolved:
        """What ``scheme:rest`` names; by default, this source loads ``rest`` itself.

        Raises:
            MechlabError: ``rest`` names nothing this source can load (saying what to pass).
        """
        return Resolved(self.scheme, rest)

    def load(
        self, target: str, *, source: str, device: str | torch.device, dtype: torch.dtype, status: Status
    ) -> tuple[Any, ModelInfo]:
        """Load ``target`` as a hooked model and describe it (``source`` is the user's string).

        A source whose ``resolve`` always hands on to another source (``ollama``, ``bundled``) need
        not define it.
        """
        raise SourcePluginError(
            f"The model source {self.scheme!r} resolved {target!r} to itself but loads nothing: its "
            "resolve() must name a source that loads (e.g. Resolved('gguf', path))."
        )


@dataclasses.dataclass(frozen=True)
class SourceRegistry:
    """Installed sources by scheme. Build one with ``from_entry_points()``; ``with_sources`` adds
    classes defined in this session (a notebook, a test)."""

    entries: Mapping[str, Entry]
    conflicts: Mapping[str, tuple[Entry, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_entry_points(cls, entry_points: Iterable[EntryPointLike] | None = None) -> "SourceRegistry":
        entries, conflicts = scan(GROUP, entry_points)
        return cls(entries=entries, conflicts=conflicts)

    def with_sources(self, *classes: type[Source], provider: str = IN_PROCESS) -> "SourceRegistry":
        """A new registry that also holds ``classes`` (a class replaces nothing: a taken scheme clashes).

        Raises:
            DuplicateSourceError: a class's scheme is already registered.
        """
        entries = dict(self.entries)
        for source in classes:
            target = f"{source.__module__}:{source.__qualname__}"
            entry = Entry(source.scheme, provider, target, _returning(source))
            taken = entries.get(source.scheme) or next(iter(self.conflicts.get(source.scheme, ())), None)
            if taken is not None:
                raise _duplicate(source.scheme, (taken, entry))
            entries[source.scheme] = entry
        return SourceRegistry(entries=dict(sorted(entries.items())), conflicts=self.conflicts)

    def schemes(self) -> list[str]:
        return sorted({*self.entries, *self.conflicts})

    def get(self, scheme: str) -> Source:
        """The source registered as ``scheme``, instantiated.

        Raises:
            DuplicateSourceError: two distributions register ``scheme``.
            SourceError: nothing is registered as ``scheme`` (the message lists what is).
            SourcePluginError: the plugin cannot be loaded or is not a ``Source``.
        """
        if scheme in self.conflicts:
            raise _duplicate(scheme, self.conflicts[scheme])
        entry = self.entries.get(scheme)
        if entry is None:
            hint = (
                f"Unknown scheme {scheme!r}: known schemes are {', '.join(s + ':' for s in self.schemes())}."
            )
            raise SourceError(MSG_UNKNOWN_SOURCE.format(source=f"{scheme}:", hint=hint, forms=self.forms()))
        try:
            cls = entry.loader()
        except Exception as error:
            raise SourcePluginError(
                f"Model source {scheme!r} from {entry} could not be loaded: {type(error).__name__}: {error}. "
                f"Reinstall {entry.provider}, or uninstall it."
            ) from error
        if not (isinstance(cls, type) and issubclass(cls, Source) and getattr(cls, "scheme", None) == scheme):
            raise SourcePluginError(
                f"{entry.target} (from {entry.provider}) is registered as model source {scheme!r} but is "
                f"{cls!r}, not a subclass of mechlab.models.sources.Source whose scheme is {scheme!r}."
            )
        return cls()

    def _usable(self) -> list[tuple[str, Source]]:
        """Every source that loads (a broken plugin breaks only itself: ``get`` reports it)."""
        usable = []
        for scheme in self.entries:
            try:
                usable.append((scheme, self.get(scheme)))
            except SourceError:
                continue
        return usable

    def forms(self) -> str:
        """The "Expected one of" lines of every usable source, by priority."""
        ranked = sorted(self._usable(), key=lambda pair: (pair[1].priority, pair[0]))
        lines = [line for scheme, src in ranked for line in (src.forms or (f"{scheme}:...",))]
        return "\n".join(f"    {line}" for line in lines)

    def resolve(self, source: str) -> Resolved:
        """Classify a source string: ``SCHEME:REST`` by its scheme, a bare string by the source that
        claims it; a resolution that names another source is followed (``ollama:`` → ``gguf``).

        Raises:
            SourceError: empty, an unknown scheme, or nothing claims it; DuplicateSourceError: two
            sources claim it. ModelNotFoundError: it looks like a path, and nothing is there.
        """
        text = source.strip()
        if not text:
            raise SourceError(
                MSG_UNKNOWN_SOURCE.format(source=source, hint="The source is empty.", forms=self.forms())
            )
        scheme, sep, rest = text.partition(":")
        if sep and scheme in self.entries:
            return self.get(scheme).resolve(rest)
        claimants = sorted((src.priority, scheme, src) for scheme, src in self._usable() if src.claims(text))
        first = [(scheme, src) for priority, scheme, src in claimants if priority == claimants[0][0]]
        if len(first) > 1:
            names = ", ".join(scheme for scheme, _ in first)
            examples = ", ".join(f"{scheme}:{text}" for scheme, _ in first)
            raise DuplicateSourceError(MSG_SOURCES_CLAIM.format(source=text, names=names, examples=examples))
        if first:
            return first[0][1].resolve(text)
        if looks_like_path(text):
            raise missing(source, Path(text).expanduser())
        if sep and len(scheme) > 1:
            hint = (
                f"Unknown scheme {scheme!r}: known schemes are {', '.join(s + ':' for s in self.schemes())}."
            )
            raise SourceError(MSG_UNKNOWN_SOURCE.format(source=source, hint=hint, forms=self.forms()))
        raise SourceError(
            MSG_UNKNOWN_SOURCE.format(source=source, hint="It is not a path that exists.", forms=self.forms())
        )


def looks_like_path(text: str) -> bool:
    """Whether ``text`` can only be meant as a file or directory: Hub names are ``NAME`` or ``ORG/NAME``."""
    return (
        text.startswith((".", "/", "~"))
        or text.lower().endswith(".gguf")
        or "\\" in text
        or text.count("/") > 1
    )


def missing(source: str, path: Path) -> ModelNotFoundError:
    """The error for a path that names nothing (a symbolic-link loop is named as one)."""
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        pass
    except (OSError, RuntimeError) as error:  # ELOOP: Python 3.11 raises RuntimeError, 3.13 OSError
        return ModelNotFoundError(MSG_SYMLINK_LOOP.format(source=source, path=path, error=error))
    else:  # something is there that no source takes (a FIFO, a device)
        return ModelNotFoundError(
            f"{source!r} is {kind(path)}, not a file. Pass the path of the .gguf file your runtime loads, "
            "or a Hugging Face directory."
        )
    return ModelNotFoundError(MSG_PATH_MISSING.format(source=source, resolved=path.resolve()))


def _duplicate(name: str, entries: tuple[Entry, ...]) -> DuplicateSourceError:
    return DuplicateSourceError(
        MSG_DUPLICATE_SOURCE.format(
            name=name, first=entries[0], second=" and ".join(str(e) for e in entries[1:])
        )
    )


def _returning(source: type[Source]) -> Callable[[], type[Source]]:
    def load() -> type[Source]:
        return source

    return load


_DEFAULT_SOURCES: SourceRegistry | None = None


def default_sources() -> SourceRegistry:
    """The installed model sources (entry-point group ``mechlab.sources``), read once per process."""
    global _DEFAULT_SOURCES
    if _DEFAULT_SOURCES is None:
        _DEFAULT_SOURCES = SourceRegistry.from_entry_points()
    return _DEFAULT_SOURCES


def resolve_source(source: str, sources: SourceRegistry | None = None) -> Resolved:
    """Classify a source string: ``(scheme, target)`` of the source that loads it.

    A Hub name that TransformerLens knows by another name comes back as its Hub name
    (``gpt2-small`` → ``("hub", "gpt2")``). A string that looks like a path (``./x``, ``/x``, ``~/x``,
    ``x.gguf``, ``a/b/c``) but names nothing raises ``ModelNotFoundError``; it never reaches the Hub.
    """
    return (sources or default_sources()).resolve(source)
