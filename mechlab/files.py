"""Writing files so that nothing is lost: a write either completes or leaves the old content.

``atomic_write`` writes a file through a temporary file in the same directory and a rename;
``atomic_dir_sibling`` builds a file or directory beside its final place and renames it there. Reports,
JSON summaries, capture shards, toy checkpoints and the conversion cache all write through these two.

What a write would replace is checked first (``check_target``): it must be absent or a regular file.
A directory, a device (``/dev/full``), a FIFO or a socket is refused before any work; a symbolic link
is followed and its target written (the link stays a link to the new content); a read-only file is
refused unless the caller says to replace it (``replacing_read_only()``: the CLI's ``--force``).
``check_targets`` also refuses two outputs of one command that name the same file.
"""

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from mechlab.errors import InputError


def _default_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` minus the process umask."""
    # os.umask can only be read by setting it; it is restored at once.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FORCE: ContextVar[bool] = ContextVar("mechlab_replace_read_only", default=False)
_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes, read ``chunk`` bytes at a time (4 MiB keeps it I/O-bound)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def kind(path: Path) -> str:
    """What is at ``path``, in words: "a regular file", "a directory", "a FIFO (named pipe)", …"""
    return _kind_of(path.stat().st_mode)


@contextmanager
def replacing_read_only() -> Iterator[None]:
    """Within this block, writes may replace read-only files (the CLI's ``--force``)."""
    token = _FORCE.set(True)
    try:
        yield
    finally:
        _FORCE.reset(token)


def read_text(path: Path, what: str) -> str:
    """``path``'s UTF-8 text; an unreadable or non-UTF-8 file is an ``InputError`` naming ``what``."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"Cannot read {what} {path}: {error.strerror}.") from error
    except UnicodeDecodeError as error:
        raise InputError(
            f"{what[:1].upper()}{what[1:]} {path} is not UTF-8 text (byte {error.start:,}: {error.reason}). "
            "Save it as UTF-8."
        ) from error


def check_target(path: Path, what: str = "output") -> Path:
    """The file a write to ``path`` will replace, checked before any work: absent or a regular file.

    A symbolic link is followed: its target is what gets written (the link is kept).

    Raises:
        InputError: a directory, device, FIFO or socket; a symbolic-link loop; a read-only file
            (unless within ``replacing_read_only()``); a missing or unwritable directory.
    """
    path = Path(path)
    if path.is_symlink():
        try:
            path = path.resolve(strict=False)
        except (OSError, RuntimeError) as error:  # ELOOP: Python 3.11 raises RuntimeError
            raise InputError(f"Cannot write {what} {path}: {error}. Point it at a file.") from error
    try:
        status = path.stat()
    except FileNotFoundError:
        status = None
    except OSError as error:
        raise InputError(f"Cannot write {what} {path}: {error.strerror}. Choose another path.") from error
    if status is not None:
        if stat.S_ISDIR(status.st_mode):
            raise InputError(
                f"{what} {path} is a directory; give a file name inside it, such as {path / 'report.html'}."
            )
        if not stat.S_ISREG(status.st_mode):
            raise InputError(
                f"{what} {path} is {_kind_of(status.st_mode)}, not a regular file; mechlab replaces only "
                "regular files. Choose a file path."
            )
        if not status.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) and not _FORCE.get():
            raise InputError(
                f"{what} {path} is read-only; mechlab does not replace it. Choose another path, make it "
                "writable, or pass --force to replace it."
            )
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(
            f"Cannot write {what} {path}: directory {directory} does not exist. Create it first."
        )
    if not os.access(directory, os.W_OK):
        raise InputError(
            f"Cannot write {what} {path}: directory {directory} is not writable. Choose another path."
        )
    try:  # root passes os.access everywhere (/proc, read-only mounts): create and remove a file there
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=directory)
    except OSError as error:
        raise InputError(f"Cannot write {what} {path}: {error.strerror}. Choose another path.") from error
    os.close(handle)
    os.unlink(probe)
    return path


def check_targets(paths: dict[str, Path | None]) -> dict[str, Path]:
    """``check_target`` for each named output (``None``: not asked for); two that name one file are
    refused, so one cannot silently overwrite the other.

    Raises:
        InputError: as ``check_target``, or two outputs resolve to the same file.
    """
    checked = {what: check_target(path, what) for what, path in paths.items() if path is not None}
    seen: dict[Path, str] = {}
    for what, path in checked.items():
        key = path.resolve()
        if key in seen:
            raise InputError(
                f"{seen[key]} and {what} both name {path}: the second would overwrite the first. Give "
                "each its own file."
            )
        seen[key] = what
    return checked


def check_disk(directory: Path, needed: int, what: str) -> None:
    """Refuse to write ``needed`` bytes under ``directory`` when the disk does not have them.

    Raises:
        InputError: saying how much is needed, how much is free, and where.
    """
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise InputError(
            f"Writing {what} needs {needed / 1024**3:.2f} GB in {directory}, which has "
            f"{free / 1024**3:.2f} GB free. Free some space, or point MECHLAB_CACHE_DIR at a larger disk."
        )


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename.

    The file gets the permissions a plain write would give it: an existing file's own mode, else
    ``0o666`` minus the umask (``mkstemp`` alone would leave it readable by its owner only). An
    existing file at ``path`` is replaced only once the new content is complete.

    Raises:
        InputError: what is at ``path`` is not a regular file, is read-only, or the directory does
            not exist or is not writable (``check_target``; nothing is left behind).
    """
    path = check_target(Path(path))
    directory = path.parent if str(path.parent) else Path(".")
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
    is left as it was. Two processes building the same directory both succeed: the first rename
    wins and the other keeps its copy. Temporary siblings that a killed process left behind (same
    name pattern, older than ``STALE_SECONDS``) are removed first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, f".{final.name}.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    target = tmp / "entry"
    try:
        yield target
        if not (target.is_dir() and final.is_dir()):
            try:
                os.replace(target, final)
            except OSError as error:  # another process renamed its complete directory first
                if not (error.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.is_dir()):
                    raise
        # else: another process completed the same directory first; keep its copy.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# A temporary sibling older than this was left by a process that was killed (a conversion of an
# 8B model takes minutes, not hours).
STALE_SECONDS = 6 * 3600


def remove_stale(directory: Path, prefix: str, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove entries of ``directory`` named ``prefix*`` and untouched for ``max_age`` seconds."""
    removed: list[Path] = []
    now = time.time()
    try:
        candidates = [p for p in directory.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in candidates:
        try:
            if now - path.lstat().st_mtime < max_age:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue  # another process removed or still uses it
    return removed
