"""The `mechlab lens`, `attribute` (every method, --contrast, --html) and `probe` commands on SmolLM2.

One short prompt each; the numbers asserted are the model's (p(" Paris") after the Eiffel prompt,
p(" she") after the nurse prompt), so a command that explains the wrong thing fails here.
"""

import csv
import json
import math
import re
from pathlib import Path

import pytest

from mechlab.cli import main

EIFFEL = "The Eiffel Tower is located in the city of"
NURSE = "The nurse was tired because"
REMOTE = re.compile(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""", re.I)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return " ".join(capsys.readouterr().out.split())


def _float(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text}"
    return float(found.group(1))


def test_lens_command(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["lens", "smollm2", EIFFEL], capsys)
    assert "Logit lens at position 9 (' of')" in out
    # The final row is the model's own prediction: ' Paris' first, rank 0; layer 0 ranks it far down.
    p_final = _float(r"│ final │ ' Paris' (0\.\d+),", out)
    assert 0.6 < p_final < 0.8
    assert _float(r"│ final │ [^│]+│ (-[\d.]+) │ 0 │", out) == pytest.approx(math.log(p_final), abs=0.01)
    assert _float(r"│ L0 pre │ [^│]+│ -[\d.]+ │ (\d+) │", out) > 100
    assert abs(_float(r"remainder ([+-][\d.e+-]+)", out)) < 1e-3
    assert _float(r"model value ([\d.]+)", out) == pytest.approx(12.84, abs=0.05)
    assert re.search(r"Heads with the largest direct effect: (L\d+H\d+ [+-][\d.]+, ){7}", out)


def test_attribute_gxi_with_contrast_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "attribution.html"
    argv = ["attribute", "smollm2", NURSE, "--target", " she", "--contrast", " he", "--method", "gxi"]
    out = _run([*argv, "--html", str(html)], capsys)
    assert "Gradient × input of logit(' she') − logit(' he')" in out
    assert _float(r"F\(x\) = ([\d.]+)", out) == pytest.approx(2.185, abs=0.01)  # the logit difference
    assert _float(r"Most attributed tokens: ' nurse' ([+-][\d.]+)", out) > 0.5
    assert f"Wrote {html}" in out
    page = html.read_text()
    assert REMOTE.search(page) is None and "http://" not in page and "https://" not in page
    for token in ("The", " nurse", " was", " tired", " because"):
        assert f">{token}</span>" in page
    assert "Gradient × input" in page


def test_attribute_occlusion(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(["attribute", "smollm2", NURSE, "--target", " she", "--method", "occlusion"], capsys)
    p_she = _float(r"The model's next-token prediction: ' she' ([\d.]+)", out)
    assert _float(r"Occlusion of logprob\(' she'\): F\(x\) = (-[\d.]+)", out) == pytest.approx(
        math.log(p_she), abs=0.01
    )
    # Replacing " because" with "." changes log p(" she") the most.
    assert _float(r"Most attributed tokens: ' because' ([+-][\d.]+)", out) > 2
    assert "Completeness error" not in out  # occlusion has no completeness axiom


def test_probe_command_on_a_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = Path(__file__).parents[2] / "mechlab" / "data" / "probe_number.jsonl"
    rows = [json.loads(line) for line in shipped.read_text().splitlines()[:48]]
    data = tmp_path / "number.csv"
    with data.open("w", newline="") as file:
        writer = csv.DictWriter(file, ["text", "label", "word"])
        writer.writeheader()
        writer.writerows(rows)
    out = _run(["probe", "smollm2", str(data), "--layers", "0,12"], capsys)
    assert "48 texts (plural 24, singular 24)" in out
    assert "Majority-class accuracy 0.500" in out and "36 training / 12 held-out texts" in out
    found = re.search(r"│ 12 │ ([\d.]+) │ ([\d.]+) │ ([+-][\d.]+) │", out)
    assert found, out
    accuracy, control, selectivity = (float(g) for g in found.groups())
    assert accuracy >= 0.9 and selectivity == pytest.approx(accuracy - control, abs=2e-3)
    assert selectivity > 0.2
    assert re.search(r"│ 0 │ [\d.]+ │ [\d.]+ │ [+-][\d.]+ │", out)
