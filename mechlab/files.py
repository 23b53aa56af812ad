"""Writing files so that nothing is lost: a write either completes or leaves the old content.

``atomic_write`` writes a file through a temporary file in the same directory and a rename;
``atomic_dir_sibling`` builds a file or directory beside its final place and renames it there. Reports,
JSON summaries, capture shards, toy checkpoints and the conversion cache all write through these two.
"""

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mechlab.errors import InputError


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


@contextmanager
def atomic_dir_sibling(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it onto ``final``.

    Works for files and directories. On an exception the temporary path is removed and ``final``
    is left as it was.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    target = tmp / "entry"
    try:
        yield target
        if not (target.is_dir() and final.is_dir()):
            os.replace(target, final)
        # else: another process completed the same directory first; keep its copy.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
