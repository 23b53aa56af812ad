"""The `mechlab explain` report in headless Chromium with networking disabled.

The page must draw its attention widgets, fetch nothing, log no console error, show the
completion, and show a hostile prompt as text: no dialog opens and no element is injected.
Set ``MECHLAB_SCREENSHOT=path.png`` to keep the screenshot (the README's picture comes from here).
"""

import os
from pathlib import Path

import pytest

from mechlab.explain.explanation import explain
from mechlab.explain.settings import ExplainSettings
from tests.browser.harness import visit

HOSTILE = (
    'Translate <script>alert(1)</script> and "><img src=x onerror=alert(1)> -- The nurse was tired because'
)


@pytest.mark.smollm2
def test_report_renders_offline_and_safely(chromium, smollm2, tmp_path: Path) -> None:
    settings = ExplainSettings(
        max_new_tokens=8, detectors=("induction", "previous-token"), detector_samples=2
    )
    explanation = explain(smollm2, HOSTILE, settings=settings)
    path = explanation.save(tmp_path / "report.html")
    seen = visit(chromium, path, settle_s=4)
    driver = seen.driver

    assert seen.external_requests == [], seen.external_requests
    assert seen.console_errors == [], seen.console_errors
    assert seen.dialogs == []
    widgets = driver.find_elements("css selector", ".widget")
    assert len(widgets) >= 1
    assert all(len(w.find_elements("css selector", "*")) > 10 for w in widgets)  # React drew each one
    body = driver.find_element("tag name", "body").text
    assert " ".join(explanation.completion.text.split()) in " ".join(body.split())
    assert "<script>alert(1)</script>" in body  # the prompt, shown as text
    injected = driver.execute_script(
        "return [document.querySelectorAll('img[src=\"x\"]').length,"
        " Array.from(document.scripts).filter(s => s.textContent.includes('alert(1)')).length]"
    )
    assert injected == [0, 0]
    if os.environ.get("MECHLAB_SCREENSHOT"):
        Path(os.environ["MECHLAB_SCREENSHOT"]).write_bytes(seen.screenshot)
