"""The detect, detectors and train-toy commands."""

from pathlib import Path

import pytest

import mechlab
from mechlab import cli


def test_detectors_lists_builtins_with_provider(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["detectors"]) == 0
    out = capsys.readouterr().out
    for name in (
        "induction",
        "previous-token",
        "duplicate-token",
        "attention-sink",
        "current-token",
        "copying",
    ):
        rows = [line for line in out.splitlines() if f" {name} " in line]
        assert rows and "mechlab" in rows[0], f"no row for {name} provided by mechlab in:\n{out}"


def test_detectors_shows_a_name_clash_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mechlab.detectors.builtin import PreviousTokenDetector
    from tests.unit.detectors.test_detectors import FakeDist, FakeEntryPoint

    points = [
        FakeEntryPoint("induction", "a:I", FakeDist("pkg-a")),
        FakeEntryPoint("induction", "b:I", FakeDist("pkg-b")),
        FakeEntryPoint("previous-token", "x:P", FakeDist("mechlab"), PreviousTokenDetector),
    ]
    registry = mechlab.DetectorRegistry.from_entry_points(points)
    monkeypatch.setattr(mechlab.DetectorRegistry, "from_entry_points", classmethod(lambda cls: registry))
    assert cli.main(["detectors"]) == 0
    out = capsys.readouterr().out
    clash = next(line for line in out.splitlines() if " induction " in line)
    assert "pkg-a and pkg-b" in clash and "unusable" in clash
    assert any(" previous-token " in line and "mechlab" in line for line in out.splitlines())


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--top", "0", "argument --top: expected a positive integer, got 0"),
        ("--samples", "1", "argument --samples: expected at least 2 random sequences"),
        ("--seq-len", "x", "argument --seq-len: expected a positive integer, got 'x'"),
    ],
)
def test_detect_names_the_flag_of_a_bad_number(
    capsys: pytest.CaptureFixture[str], flag, value, message
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["detect", "toy:attn-only-2l", flag, value])
    assert message in capsys.readouterr().err


def test_detect_unknown_detector_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["detect", "toy:attn-only-2l", "--detector", "inducton"]) == 2
    err = capsys.readouterr().err
    assert "UnknownDetectorError" in err and "No detector named 'inducton'" in err


def test_train_toy_writes_a_loadable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "toy"
    assert cli.main(["train-toy", str(out_dir), "--steps", "4", "--batch-size", "4"]) == 0
    assert f"toy:{out_dir}" in capsys.readouterr().out
    loaded = mechlab.load_model(f"toy:{out_dir}")
    assert loaded.info.n_layers == 2 and (out_dir / "training.json").is_file()
