"""What a write would replace is checked first: only absent or regular files, symbolic links followed,
read-only files kept unless forced, two outputs of one command never the same file."""

import os
import socket
import stat
from pathlib import Path

import pytest

from mechlab import InputError, atomic_write, check_targets, replacing_read_only
from mechlab.files import check_target


def test_missing_and_unwritable_directories_are_refused(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(InputError, match=r"directory .*missing does not exist"):
        check_target(tmp_path / "missing" / "report.html", "--out")
    with pytest.raises(InputError, match="is a directory"):
        check_target(tmp_path, "--out")
    assert check_target(tmp_path / "report.html") == tmp_path / "report.html"
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a non-root user
    with pytest.raises(InputError, match=r"is not writable\. Choose another path"):
        check_target(tmp_path / "report.html", "--json")


def test_devices_fifos_and_sockets_are_refused_and_left_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"is a FIFO \(named pipe\), not a regular file"):
        atomic_write(fifo, "x")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    with pytest.raises(InputError, match="is a character device"):
        atomic_write(Path("/dev/null"), "x")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
        with pytest.raises(InputError, match="is a socket"):
            atomic_write(tmp_path / "sock", "x")


def test_a_symbolic_link_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    target = tmp_path / "real.html"
    target.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    atomic_write(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    loop = tmp_path / "loop.html"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="Cannot write"):
        atomic_write(loop, "x")


def test_a_read_only_file_is_kept_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text("keep me")
    path.chmod(0o444)
    with pytest.raises(InputError, match=r"is read-only; mechlab does not replace it.*--force"):
        atomic_write(path, "new")
    assert path.read_text() == "keep me"
    with replacing_read_only():
        atomic_write(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o444
    with pytest.raises(InputError, match="read-only"):
        atomic_write(path, "again")  # the permission ended with the block


def test_two_outputs_naming_one_file_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    with pytest.raises(InputError, match=r"--out and --json both name .*report\.html"):
        check_targets({"--out": out, "--json": tmp_path / "." / "report.html"})
    link = tmp_path / "alias.html"
    link.symlink_to(out)
    with pytest.raises(InputError, match="both name"):
        check_targets({"--out": out, "--json": link})
    assert check_targets({"--out": out, "--json": None, "--png": tmp_path / "a.png"}) == {
        "--out": out,
        "--png": tmp_path / "a.png",
    }
