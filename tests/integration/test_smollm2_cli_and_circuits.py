"""The `mechlab patch` / `mechlab capture` commands and the IOI discovery script on SmolLM2."""

import json

import pytest

from mechlab import cli

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Tom gave a drink to"


def test_patch_command_ranks_heads(capsys) -> None:
    code = cli.main(
        [
            "patch",
            "smollm2",
            "--clean",
            CLEAN,
            "--corrupted",
            CORRUPTED,
            "--answer",
            " Mary",
            "--wrong",
            " John",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the "Loaded ..." line
    best = max(result["cells"], key=lambda cell: cell["effect"])
    assert best["site"] == "z.23.3" and result["shape"] == [30, 9]


def test_patch_command_explains_bad_answers(capsys) -> None:
    code = cli.main(
        [
            "patch",
            "smollm2",
            "--clean",
            CLEAN,
            "--corrupted",
            CORRUPTED,
            "--answer",
            " Maryanne",
            "--wrong",
            " John",
        ]
    )
    assert code == 2
    assert "not one token" in capsys.readouterr().err


def test_capture_command_writes_shards(tmp_path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The Eiffel Tower is in\n\nWhen Mary and John went to the store\nHello\n")
    code = cli.main(
        [
            "capture",
            "smollm2",
            str(prompts),
            "--sites",
            "resid_post.20",
            "z.23.3",
            "--out",
            str(tmp_path / "acts"),
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 3 and manifest["sites"] == ["resid_post.20", "z.23.3"]


@pytest.mark.slow
def test_ioi_script_names_the_heads(tmp_path) -> None:
    from circuits import ioi

    assert ioi.main(["--model", "smollm2", "--out", str(tmp_path), "--prompts", "3"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["clean_logit_diff"] > 3 > summary["corrupted_logit_diff"]
    assert "23.3" in summary["heads"] and any("S-inhibition" in r for r in summary["heads"]["20.0"]["roles"])
    assert {p.name for p in tmp_path.glob("*.png")} >= {
        "head_patching.png",
        "path_to_logits.png",
        "attention.png",
    }
