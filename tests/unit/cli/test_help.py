"""Every ``--help`` page renders (argparse %-formats help strings: a bare '%' breaks them)."""

import pytest

from mechlab import cli


def _commands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert {"explain", "detect", "patch", "verify", "attribute"} <= set(_commands())
    for name in _commands():
        assert name in out
    assert "95% intervals" in out and 'mechlab explain smollm2 "The nurse' in out


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_a_help_page(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"mechlab {name}" in capsys.readouterr().out
