"""``mechlab graph``: bad inputs fail before the model loads; on SmolLM2 the page is written."""

import json
from pathlib import Path

import pytest
import torch

from mechlab.cli import main
from mechlab.dictionaries.transcoder import Transcoder, transcoder_config


def test_missing_transcoders_fail_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "graph",
            "smollm2",
            "Hello",
            "--transcoders",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "g.html"),
        ]
    )
    assert code == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "g.html").exists()


def test_thresholds_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                "graph",
                "smollm2",
                "Hi",
                "--transcoders",
                str(tmp_path),
                "--out",
                "g.html",
                "--node-threshold",
                "1.5",
            ]
        )


@pytest.mark.smollm2
@pytest.mark.slow
def test_graph_command_on_smollm2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "tc"
    for layer in (0, 15, 29):
        tc = Transcoder(transcoder_config(576, layer, 1152, k=16), seed=layer)
        with torch.no_grad():
            tc.W_enc.mul_(20.0)
        tc.save(directory / f"layer_{layer}")
    out = tmp_path / "graph.html"
    code = main(
        [
            "graph",
            "smollm2",
            "The Eiffel Tower is located in the city of",
            "--transcoders",
            str(directory),
            "--out",
            str(out),
            "--json",
            str(tmp_path / "g.json"),
            "--max-features",
            "32",
            "--verify-top",
            "5",
            "--corpus-tokens",
            "512",
            "--node-threshold",
            "1",
            "--edge-threshold",
            "1",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "replacement score" in text and "completeness score" in text and "intervention agreement" in text
    assert "Strongest paths through features to ' Paris'" in " ".join(text.split())
    html = out.read_text()
    assert "Paris" in html and "graph-svg" in html and "Paths through features" in html
    nodes = json.loads((tmp_path / "g.json").read_text())["nodes"]
    features = [n for n in nodes if n["feature_type"] == "cross layer transcoder"]
    # every feature (all kept: thresholds 1) is named by what excites it and the tokens it promotes
    assert features and all("→ " in n["clerp"] for n in features)
    # layer 0's by the vocabulary tokens that excite them alone (also listed on their cards)
    layer0 = [n for n in features if n["layer"] == "0"]
    assert layer0 and all(not n["clerp"].startswith("→") for n in layer0)
    assert html.count("Tokens that excite it on their own") == len(layer0)
    later = [n for n in features if n["layer"] != "0"]
    assert any(not n["clerp"].startswith("→") for n in later)  # later layers' by their corpus contexts
