"""Every output path of a command is checked before the model loads."""

from pathlib import Path

import pytest

from mechlab import cli
from mechlab.cli import common, explain


@pytest.fixture
def no_loading(monkeypatch):  # type: ignore[no-untyped-def]
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(common, "load", refuse)
    monkeypatch.setattr(explain, "load", refuse)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{tmp}/r.html", "--json", "{tmp}/r.html"], "--out and --json both name"),
        (["--out", "/dev/null"], "is a character device, not a regular file"),
        (["--out", "{tmp}"], "is a directory"),
        (["--out", "{tmp}/read-only.html"], "is read-only; mechlab does not replace it"),
    ],
    ids=["json-equals-out", "device", "directory", "read-only"],
)
def test_explain_refuses_bad_outputs_before_loading(
    tmp_path: Path, capsys, no_loading, extra, message
) -> None:
    (tmp_path / "read-only.html").write_text("keep")
    (tmp_path / "read-only.html").chmod(0o444)
    args = ["explain", "toy:tiny", "some prompt", *(a.format(tmp=tmp_path) for a in extra)]
    assert cli.main(args) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert (tmp_path / "read-only.html").read_text() == "keep"


def test_force_lets_a_read_only_output_through_the_checks(tmp_path: Path, capsys) -> None:
    path = tmp_path / "page.html"
    path.write_text("old")
    path.chmod(0o444)
    assert cli.main(["attention", "toy:tiny", "hello", "--html", str(path)]) == 2
    assert "is read-only" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["attention", "toy:tiny", "hello", "--html", str(path), "--force"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "read-only" not in err and "no tokenizer" in err  # past the checks, refused for the text
