"""circuits/induction.py on the trained toy model: the whole circuit, end to end."""

import json
from pathlib import Path

import pytest

from circuits import induction


def test_induction_script_finds_and_tests_the_circuit(
    induction_toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        induction.main(["--model", f"toy:{induction_toy_dir}", "--out", str(tmp_path), "--samples", "8"]) == 0
    )
    assert "induction score, clean" in capsys.readouterr().out
    summary = json.loads((tmp_path / "induction.json").read_text())
    ablated_prev = summary["ablation"]["ablated_previous_token_heads"]
    assert ablated_prev and all(head.startswith("0.") for head in ablated_prev)
    scores = summary["ablation"]["scores"]
    clean, ablated = scores["clean"], scores["ablate all previous-token heads"]
    assert clean and all(head.startswith("1.") for head in clean)
    for head in clean:
        assert clean[head]["score"] > 0.7
        assert ablated[head]["score"] < 0.3
    # The previous-token heads act through the induction heads' keys, not their queries.
    patching = summary["key_query_patching"]
    for head in clean:
        assert patching["keys_patched"][head] < patching["clean"][head] / 2
        assert patching["queries_patched"][head] > 0.8 * patching["clean"][head]
    composition = summary["composition"]
    for pair, kinds in composition["pairs"].items():
        assert kinds["k"] > composition["random_baseline"], pair
        assert kinds["k"] > kinds["q"] and kinds["k"] > kinds["v"], pair
    loss = summary["loss"]
    assert loss["clean"]["second_copy"] < 0.5
    assert loss["induction_ablated"]["second_copy"] > loss["clean"]["second_copy"] + 2.0
    for figure in ("induction_scores.png", "previous_token_scores.png", "ablation.png", "loss.png"):
        assert (tmp_path / figure).stat().st_size > 1000
