"""The `mechlab explain` report in headless Chromium with networking disabled.

The page must pass ``report_problems`` (fetch nothing, log no console error, draw its attention
widgets, show the completion and the Integrated Gradients section; ``make demo-check`` applies the
same checks to the demo's report) and show a hostile prompt as text: no dialog opens and no element
is injected.
Set ``MECHLAB_SCREENSHOT=path.png`` to keep the screenshot (the README's picture comes from here).
"""

import os
from pathlib import Path

import pytest

from mechlab.report.explain import explain
from mechlab.report.settings import ExplainSettings
from tests.browser.harness import report_problems, visit

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

    assert report_problems(seen, explanation.completion.text) == []
    body = driver.find_element("tag name", "body").text
    assert "<script>alert(1)</script>" in body  # the prompt, shown as text
    injected = driver.execute_script(
        "return [document.querySelectorAll('img[src=\"x\"]').length,"
        " Array.from(document.scripts).filter(s => s.textContent.includes('alert(1)')).length]"
    )
    assert injected == [0, 0]
    if os.environ.get("MECHLAB_SCREENSHOT"):
        Path(os.environ["MECHLAB_SCREENSHOT"]).write_bytes(seen.screenshot)
