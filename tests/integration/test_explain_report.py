"""`mechlab explain` on SmolLM2: the numbers behind the report, the report itself, bad inputs."""

import json
import re
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.cli import main
from mechlab.models import verify as verify_module
from mechlab.models.verify import GenerationPair, VerifyReport
from mechlab.report.explain import Explanation, explain
from mechlab.report.settings import ExplainSettings

NURSE = "The nurse was tired because"
SETTINGS = ExplainSettings(max_new_tokens=6, contrast=" he", detectors=("induction",), detector_samples=2)


@pytest.fixture(scope="module")
def nurse(smollm2) -> Explanation:
    return explain(smollm2, NURSE, settings=SETTINGS)


def test_explained_numbers_are_the_models(nurse, smollm2) -> None:
    model = smollm2.model
    assert nurse.completion.text.startswith(" she")
    assert (nurse.chosen_text, nurse.contrast_text) == (" she", " he")
    with torch.no_grad():
        logits = model(nurse.context)[0, -1]
    diff = float(logits[nurse.chosen] - logits[nurse.contrast])
    assert nurse.dla.value == pytest.approx(diff, abs=1e-4)
    assert nurse.dla.total + nurse.dla.remainder == pytest.approx(diff, abs=1e-4)
    assert abs(nurse.dla.remainder) < 1e-3
    probs = torch.softmax(logits.float(), -1)
    assert nurse.chosen_prob == pytest.approx(float(probs[nurse.chosen]), abs=1e-5)


def test_integrated_gradients_credit_the_occupation(nurse) -> None:
    assert nurse.ig.completeness_error is not None and nurse.ig.completeness_error <= 0.05
    best_word = max(nurse.ig.words(), key=lambda pair: pair[1])[0]
    assert best_word.strip() == "nurse"


def test_knockout_effects_are_real(nurse, smollm2) -> None:
    model = smollm2.model
    metric = mechlab.LogitDiff(nurse.chosen, nurse.contrast)
    with torch.no_grad():
        clean = float(metric(model(nurse.context))[0])
    top = nurse.heads[0]

    def knock_out(z: torch.Tensor, site: mechlab.Site) -> torch.Tensor:
        z = z.clone()
        z[:, :, top.head] = 0
        return z

    with torch.no_grad(), mechlab.hooked(model, {mechlab.Site("z", top.layer): knock_out}):
        ablated = float(metric(model(nurse.context))[0])
    assert top.ablation == pytest.approx(clean - ablated, abs=1e-3)
    effects = [abs(h.ablation) for h in nurse.heads]
    assert effects == sorted(effects, reverse=True) and effects[0] > 0.3
    assert [(h.layer, h.head) for h in nurse.heads] == list(nurse.attention.heads)


def test_report_is_offline_and_escaped(nurse, tmp_path: Path) -> None:
    path = nurse.save(tmp_path / "report.html", id_prefix="t")
    html = path.read_text()
    assert html.count("window.CircuitsVis=CircuitsVis") == 1  # the bundle, once
    for attribute in ('src="http', "src='http", 'href="http', "@import", "url(http"):
        assert attribute not in html
    assert "Content-Security-Policy" in html and "connect-src 'none'" in html
    assert "t-w0" in html and nurse.completion.text[:20] in html
    summary = json.loads(json.dumps(nurse.to_dict(), default=str))
    assert summary["explained"]["chosen"] == "' she'" and summary["manifest"]["model"]["sha256"]


def test_hostile_prompt_is_shown_as_text(smollm2, tmp_path: Path) -> None:
    prompt = 'Say <script>alert(1)</script> "><img src=x onerror=alert(1)> now:'
    settings = ExplainSettings(max_new_tokens=2, detectors=(), top_heads=2, ig_steps=16)
    html = explain(smollm2, prompt, settings=settings).save(tmp_path / "x.html").read_text()
    body = html.split("<body>", 1)[1]
    assert "<script>alert(1)" not in body and "<img src=x" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_detectors_are_cached_per_model_file(smollm2, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path))
    settings = ExplainSettings(
        max_new_tokens=1, detectors=("previous-token",), detector_samples=2, ig_steps=16
    )
    first = explain(smollm2, NURSE, settings=settings)
    files = list((tmp_path / "detectors").glob("*.json"))
    assert len(files) == 1
    second = explain(smollm2, NURSE, settings=settings)
    assert first.detectors is not None and second.detectors is not None
    a, b = first.detectors["previous-token"], second.detectors["previous-token"]
    assert torch.allclose(a.scores, b.scores) and a.top(3) == b.top(3)
    assert second.manifest["timings_s"]["detectors"] < first.manifest["timings_s"]["detectors"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "The prompt is empty"),
        (["word " * 9000], "context holds 8192"),
        ([NURSE, "--target", " nursemaid"], r"target ' nursemaid' is not one token: .* into 3 tokens"),
        ([NURSE, "--out", "/nonexistent-dir/report.html"], "does not exist. Create it first"),
    ],
    ids=["empty", "too-long", "multi-token-target", "unwritable"],
)
def test_bad_input_is_a_clear_error_and_leaves_no_file(
    args, message, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["explain", "smollm2", *args, "--no-detectors", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, " ".join(err.split())), err
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_report(nurse, tmp_path: Path, disk_full_mid_write: None) -> None:
    previous = tmp_path / "report.html"
    previous.write_text("yesterday's report")
    with pytest.raises(OSError, match="No space left on device"):
        nurse.save(previous)
    assert previous.read_text() == "yesterday's report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_report_says_who_chose_the_tokens(nurse, tmp_path: Path) -> None:
    text = " ".join(nurse.save(tmp_path / "r.html").read_text().split())
    assert (
        "The contrast token was chosen by the user (--contrast); the explained token is the one the "
        "model generated." in text
    )
    assert "model chose &#x27; she&#x27;" in text and "tokens were chosen by the user" not in text


CHEAP = ["--max-new-tokens", "1", "--no-detectors", "--ig-steps", "8", "--top-heads", "1"]


def _report(passed: bool) -> VerifyReport:
    return VerifyReport(
        source="smollm2",
        reference="transformers loading the GGUF directly [test]",
        n_prompts=4,
        n_positions=40,
        max_abs_dlogprob=4e-5 if passed else 3e-2,
        mean_kl=1e-9,
        max_kl=1e-8,
        top1_agreement=1.0 if passed else 0.95,
        generations=(GenerationPair("p", " Paris", " Paris"),),
        tolerance=1e-4,
        seconds=0.0,
    )


def test_cli_fails_after_writing_the_report_when_verification_fails(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # The real check (~25 s) runs in test_smollm2_load.py; here it returns a failing report.
    monkeypatch.setattr(verify_module, "verify", lambda loaded: _report(passed=False))
    out = tmp_path / "r.html"
    assert main(["explain", "smollm2", NURSE, "--verify", *CHEAP, "--out", str(out)]) == 1
    printed = " ".join(capsys.readouterr().out.split())
    assert out.is_file() and f"Report: {out}" in printed
    assert "Verification FAIL: hooked model vs transformers loading the GGUF directly [test]" in printed
    assert "max |Δ log-prob| 3.00e-02 (tolerance 1e-04)" in printed
    assert "The report was written, but the hooked model disagrees with its reference" in printed
    assert "FAIL: hooked model" in out.read_text()  # the report's fidelity section


def test_chat_explain_shows_the_templated_text(smollm2, tmp_path: Path) -> None:
    settings = ExplainSettings(chat=True, max_new_tokens=1, detectors=(), top_heads=1, ig_steps=8)
    explanation = explain(smollm2, "Who was tired?", settings=settings)
    summary = explanation.to_dict()
    assert summary["prompt"] == "Who was tired?"
    assert "<|im_start|>user\nWho was tired?<|im_end|>\n<|im_start|>assistant\n" in summary["model_text"]
    html = explanation.save(tmp_path / "chat.html").read_text()
    assert "with the model&#x27;s chat template applied" in html
    assert "&lt;|im_start|&gt;user\nWho was tired?&lt;|im_end|&gt;" in html
    assert summary["manifest"]["settings"]["chat"] is True


def test_cli_writes_report_and_summary(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(verify_module, "verify", lambda loaded: _report(passed=True))
    out, summary = tmp_path / "r.html", tmp_path / "s.json"
    code = main(
        [
            "explain",
            "smollm2",
            NURSE,
            "--contrast",
            " he",
            "--max-new-tokens",
            "3",
            "--no-detectors",
            "--verify",
            "--out",
            str(out),
            "--json",
            str(summary),
        ]
    )
    printed = " ".join(capsys.readouterr().out.split())
    assert code == 0 and out.is_file()
    data = json.loads(summary.read_text())
    assert data["explained"]["contrast"] == "' he'" and data["completion"].startswith(" she")
    assert data["verification"]["passed"] is True
    assert "Report:" in printed and "completeness error" in printed
    assert " ".join(f"{NURSE}{data['completion']}".split()) in printed  # the completion
    assert re.search(r"Alternatives at token 0: ' she' 0\.5\d\d, ' of' 0\.1\d\d, ' he' 0\.0\d\d", printed)
    assert "Verification PASS: hooked model vs transformers loading the GGUF directly [test]" in printed
