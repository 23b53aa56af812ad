"""Model sources: where a model comes from, one module per source, registered as entry points.

A source string is ``SCHEME:REST`` (``gguf:model.gguf``, ``ollama:llama3.2``, ``toy:tiny``) or a bare
string that one source claims (``model.gguf`` is a file, ``smollm2`` the bundled model, ``ORG/NAME`` a
Hub name). Each source is a ``Source`` subclass declared in the entry-point group ``mechlab.sources``::

    [project.entry-points."mechlab.sources"]
    gguf = "mechlab.models.sources.gguf:GGUFSource"

mechlab's built-ins are declared exactly as a third party's would be. ``SourceRegistry`` reads the
group into a value (``SourceRegistry.from_entry_points()``): an unknown scheme is an error listing the
installed ones, and two packages registering one scheme make it unusable, naming both.

Adding a source is one module (a ``Source`` subclass) and one registration line.
"""

from mechlab.models.sources.base import GROUP, Resolved, Source, SourceRegistry

__all__ = ["GROUP", "Resolved", "Source", "SourceRegistry"]
