"""A prompt file for ``explain_prompts`` / ``mechlab explain --prompts``: every bad line is refused
with its line number before a model loads, and the command takes a prompt or a file, not both."""

import json
from pathlib import Path

import pytest

import mechlab
from mechlab.cli import main
from mechlab.report.prompts import PromptTask, index_page, read_prompts


def test_a_prompt_file_reads_to_tasks_with_their_own_targets(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a b"}\n\n{"prompt": "c", "target": " d", "contrast": " e"}\n')
    assert read_prompts(path) == [PromptTask(0, "a b"), PromptTask(1, "c", " d", " e")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no prompts"),
        ('{"prompt": "a"}\nnot json\n', r"p\.jsonl:2: not JSON"),
        ('{"text": "a"}\n', r'p\.jsonl:1: expected an object with a non-empty "prompt" string'),
        ('{"prompt": "  "}\n', "non-empty"),
        ('{"prompt": "a", "answer": "b"}\n', r"unknown field\(s\) answer; allowed: prompt, target, contrast"),
        ('{"prompt": "a", "target": 3}\n', "'target' must be a string"),
    ],
)
def test_bad_prompt_files_are_refused_with_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(mechlab.InputError, match=message):
        read_prompts(path)
    with pytest.raises(mechlab.InputError, match="is not a file"):
        read_prompts(tmp_path / "missing.jsonl")


def test_the_index_links_each_report_and_shows_each_error() -> None:
    rows = [
        {
            "index": 0,
            "prompt": "a <b>",
            "report": "prompt-0000.html",
            "chosen": " x",
            "contrast": " y",
            "logit_diff": 1.5,
            "top_head": "L1H2",
        },
        {"index": 1, "prompt": "c", "error": "InputError: too long"},
    ]
    page = index_page(rows, None).render()
    assert '<a href="prompt-0000.html">a &lt;b&gt;</a>' in page and "+1.500" in page
    assert "InputError: too long" in page and "2 prompts, 1 explained, 1 failed" in page


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())  # rich wraps long lines


def test_explain_takes_a_prompt_or_a_prompt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a"}) + "\n")
    assert main(["explain", "toy:tiny", "hello", "--prompts", str(path)]) == 2
    assert "Pass either PROMPT (one report) or --prompts FILE" in _err(capsys)
    assert main(["explain", "toy:tiny"]) == 2
    assert main(["explain", "toy:tiny", "--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert "is not a file" in _err(capsys)
    assert main(["explain", "toy:tiny", "hello", "--executor", "ray"]) == 2
    assert "apply to --prompts" in _err(capsys)
    assert main(["detect", "toy:tiny", "--executor", "nope"]) == 2
    assert "No executor is registered as 'nope'" in _err(capsys)
