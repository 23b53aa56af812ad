"""Sparse autoencoders on SmolLM2 end to end: `mechlab sae train` then `mechlab sae eval` on the
offline corpus, the SAE directory it writes read back, and the training resumed from its checkpoint.

The SAE here is small and briefly trained (minutes on 2 cores); the real one and its figures are
`bench/sae.py`'s."""

import json
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab import cli

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def test_sae_train_and_eval_commands_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sae"
    train = ["sae", "train", "smollm2", "--site", "resid_post.2", "--d-sae", "512", "--k", "16",
             "--n-tokens", "8192", "--batch-size", "512", "--buffer-rows", "2048", "--context", "32",
             "--lr", "3e-3", "--out", str(out)]  # fmt: skip
    assert cli.main(train) == 0
    sae = mechlab.load_sae(out)
    assert (sae.cfg.site, sae.cfg.d_in, sae.cfg.k, sae.cfg.model_name) == ("resid_post.2", 576, 16, "smollm2")
    assert (out.parent / "sae.work" / "checkpoint" / "state.pt").is_file()
    report = tmp_path / "eval.json"
    assert cli.main(["sae", "eval", "smollm2", str(out), "--tokens", "512", "--json", str(report)]) == 0
    figures = json.loads(report.read_text())
    assert figures["l0"] <= 16.0 + 1e-6
    assert figures["fve"] > 0.25  # 16 steps of training; an untrained SAE scores below 0
    assert figures["ce_clean"] < figures["ce_sae"] < figures["ce_zero"]
    assert "loss recovered" in " ".join(capsys.readouterr().out.split())
    # A finished run asked again resumes from its last checkpoint and writes the same weights.
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    assert cli.main(train) == 0
    again = mechlab.load_sae(out)
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())


def test_an_untrained_sae_scores_below_zero() -> None:
    model = mechlab.load_model("smollm2").model
    sae = mechlab.SAE(mechlab.SAEConfig(576, 512, "topk", "resid_post.2", k=16))
    result = mechlab.evaluate_sae(model, sae, n_tokens=256, context=32)
    assert result.fve < 0.0 and result.loss_recovered < 0.5
