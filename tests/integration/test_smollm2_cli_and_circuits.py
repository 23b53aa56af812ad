"""The `mechlab patch` / `capture` / `detect` commands and the IOI and induction scripts on SmolLM2."""

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


def test_detect_command_lists_the_reference_induction_heads(tmp_path, capsys) -> None:
    data = tmp_path / "detect.json"
    argv = ["detect", "smollm2", "--detector", "induction", "--top", "5", "--json", str(data)]
    assert cli.main(argv) == 0
    rows = [line.split("│") for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    heads = [row[2].strip() for row in rows]
    assert len(heads) == 5 and {"18.6", "17.3", "17.4"} <= set(heads)  # REFERENCES.md
    assert all(row[4].strip().startswith("[") and row[-2].strip() == "detected" for row in rows)
    top = json.loads(data.read_text())["results"]["induction"]["top"]
    assert [f"{h['layer']}.{h['head']}" for h in top[:5]] == heads
    assert all(h["low"] <= h["score"] <= h["high"] for h in top[:5])


@pytest.mark.slow
def test_induction_script_on_smollm2_matches_references(tmp_path) -> None:
    from circuits import induction

    argv = ["--model", "smollm2", "--out", str(tmp_path), "--samples", "8", "--max-heads", "3"]
    assert induction.main(argv) == 0
    summary = json.loads((tmp_path / "induction.json").read_text())
    top5 = [f"{h['layer']}.{h['head']}" for h in summary["induction_heads"][:5]]
    assert {"18.6", "17.3", "17.4"} <= set(top5)  # REFERENCES.md
    scores = summary["ablation"]["scores"]
    clean, ablated = scores["clean"], scores["ablate all previous-token heads"]
    patching = summary["key_query_patching"]
    assert set(clean) == set(top5[:3])  # --max-heads 3 analyses the top three
    for head in clean:
        assert ablated[head]["score"] < clean[head]["score"] / 2
        assert patching["keys_patched"][head] < patching["clean"][head] / 2
        assert patching["queries_patched"][head] > 0.7 * patching["clean"][head]
    loss = summary["loss"]
    assert loss["induction_ablated"]["second_copy"] > loss["clean"]["second_copy"] + 3.0
