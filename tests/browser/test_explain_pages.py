"""Explanation pages opened in a real browser with networking disabled: widgets draw, nothing is
fetched, and a token that spells a script tag stays text."""

from pathlib import Path

import torch

import mechlab
from mechlab import attention_view, integrated_gradients
from mechlab.metrics import AnswerLogit
from mechlab.readout.attention import AttentionView
from tests.browser.harness import visit

EVIL = ("<b>bold", "</script><script>alert('token')</script>", "x", "<img src=x onerror=alert(2)>")


def _offline(seen: object) -> list[str]:
    return [u for u in seen.external_requests if not u.startswith("chrome")]  # type: ignore[attr-defined]


def test_attention_page_draws_its_widgets_offline(chromium, tmp_path: Path) -> None:
    pattern = torch.tril(torch.ones(4, 4)) / torch.arange(1, 5)[:, None]
    view = AttentionView(
        torch.tensor([[1, 2, 3, 4]]), EVIL, ((0, 0), (0, 1), (3, 2)), pattern.expand(3, 4, 4).clone()
    )
    seen = visit(chromium, view.save(tmp_path / "attention.html"), settle_s=3)
    assert _offline(seen) == [] and seen.console_errors == [] and seen.dialogs == []
    widgets = seen.driver.find_elements("css selector", ".widget")
    assert len(widgets) == 2
    assert all(len(w.find_elements("css selector", "*")) > 10 for w in widgets)  # React drew something
    body = seen.driver.find_element("tag name", "body").text
    assert "</script><script>alert('token')</script>" in body  # shown as text, not run


def test_model_attention_and_attribution_pages(chromium, tiny: mechlab.LoadedModel, tmp_path: Path) -> None:
    tokens = torch.tensor([[1, 5, 9, 2, 7]])
    page = attention_view(tiny.model, tokens, layers=[0, 1]).page("Views")
    integrated_gradients(tiny.model, tokens, AnswerLogit(3), baseline=0, steps=8).add_to(page)
    seen = visit(chromium, page.save(tmp_path / "report.html"), settle_s=3)
    assert _offline(seen) == [] and seen.console_errors == [] and seen.dialogs == []
    assert "completeness error" in seen.driver.find_element("tag name", "body").text


def test_bidi_controls_are_shown_and_an_injected_script_does_not_run(chromium, tmp_path: Path) -> None:
    spoof = "txt.\u202eexe"  # shown raw, this reads "txt.exe" reversed: "exe.txt"
    page = mechlab.Page("Bidi", id_prefix="bidi")
    page.section("Prompt").text(spoof)
    view = AttentionView(torch.tensor([[1, 2]]), (spoof, "b"), ((0, 0),), torch.tril(torch.ones(1, 2, 2)))
    view.add_to(page)
    html = page.render()
    # A script that reached the page some other way has no hash in the policy, so it is refused.
    injected = html.replace("</body>", "<script>document.title='pwned'</script></body>")
    path = tmp_path / "bidi.html"
    path.write_text(injected)
    seen = visit(chromium, path, settle_s=3)
    body = seen.driver.find_element("tag name", "body").text
    assert "txt.<U+202E>exe" in body and "\u202e" not in body
    assert seen.driver.title == "Bidi"  # the injected script was refused by the policy
    widgets = seen.driver.find_elements("css selector", ".widget")
    assert widgets and len(widgets[0].find_elements("css selector", "*")) > 5  # hashed scripts ran
    assert any("Content Security Policy" in e for e in seen.console_errors)
