"""mechlab detect on the trained toy model."""

import json
from pathlib import Path

import pytest

from mechlab import cli


def test_detect_on_the_trained_toy(
    induction_toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html, data = tmp_path / "report.html", tmp_path / "report.json"
    argv = ["detect", f"toy:{induction_toy_dir}", "--detector", "induction", "--detector", "previous-token"]
    assert cli.main([*argv, "--top", "3", "--html", str(html), "--json", str(data)]) == 0
    out = capsys.readouterr().out
    assert "95% interval" in out and "detected" in out
    saved = json.loads(data.read_text())
    top = saved["results"]["induction"]["top"][0]
    assert top["layer"] == 1 and top["verdict"] == "detected"
    assert f"{top['layer']}.{top['head']}" in out
    assert html.read_text().startswith("<!DOCTYPE html>")
