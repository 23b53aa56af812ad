"""Small HTML building blocks shared by every result's ``_repr_html_`` and by report pages.

All text that comes from prompts, tokenizers or models goes through ``escape``. Files are written
atomically (temporary file + rename), so a failed write leaves no partial file behind.
"""

import html
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mechlab.errors import InputError


def escape(text: object) -> str:
    """HTML-escape any value's string form, quotes included."""
    return html.escape(str(text), quote=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, caption: str = "") -> str:
    """An HTML table with every cell escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f'<table class="mechlab">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def image(data_uri: str, alt: str) -> str:
    """An ``<img>`` for a ``data:`` URI (never a remote URL)."""
    if not data_uri.startswith("data:image/"):
        raise InputError(f"Expected a data:image/... URI for an offline page, got {data_uri[:30]!r}.")
    return f'<img src="{data_uri}" alt="{escape(alt)}" style="max-width:100%">'


def _default_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` minus the process umask."""
    # os.umask can only be read by setting it; it is restored at once.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename.

    The file gets the permissions a plain write would give it: an existing file's own mode, else
    ``0o666`` minus the umask (``mkstemp`` alone would leave it readable by its owner only). An
    existing file at ``path`` is replaced only once the new content is complete.

    Raises:
        InputError: the directory does not exist or is not writable (nothing is left behind).
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"Cannot write {path}: directory {directory} does not exist. Create it first.")
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as error:
        raise InputError(f"Cannot write {path}: {error.strerror}. Choose a writable location.") from error
    try:
        with os.fdopen(handle, "wb") as out:
            if hasattr(os, "fchmod"):  # POSIX (Windows only from Python 3.13)
                mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else _default_mode()
                os.fchmod(out.fileno(), mode)
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
