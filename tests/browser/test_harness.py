"""The browser harness itself: it must see what a page does, or the report tests prove nothing."""

import json
from pathlib import Path

from tests.browser.harness import chromium_driver, main, report_problems, visit


def test_harness_sees_requests_errors_and_dialogs(chromium, tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><p id=t>hello</p>"
        '<img src="https://example.com/pixel.png">'
        "<script>console.error('broken'); alert('xss');</script></body></html>"
    )
    seen = visit(chromium, page)
    assert any("example.com" in url for url in seen.external_requests)
    assert any("broken" in error for error in seen.console_errors)
    assert seen.dialogs == ["xss"]
    assert seen.screenshot.startswith(b"\x89PNG")


def test_harness_passes_a_clean_offline_page(chromium, tmp_path: Path) -> None:
    page = tmp_path / "ok.html"
    page.write_text(
        "<html><body><p id=t>hello</p>"
        "<script>document.getElementById('t').textContent='hi'</script></body></html>"
    )
    seen = visit(chromium, page)
    assert seen.external_requests == [] and seen.console_errors == [] and seen.dialogs == []
    assert seen.driver.find_element("id", "t").text == "hi"


def test_report_check_lists_what_a_report_lacks(chromium, tmp_path: Path, capsys) -> None:
    page = tmp_path / "report.html"
    page.write_text("<html><body><section><h2>Where those heads look</h2></section></body></html>")
    problems = report_problems(visit(chromium, page), " she was")
    assert problems == [
        "no attention widget in a section 'Where those heads look'",
        "the completion ' she was' is not in the page text",
        "no section 'Which prompt tokens pushed it (Integrated Gradients)'",
    ]
    (tmp_path / "summary.json").write_text(json.dumps({"completion": " she was"}))
    assert main(["--check", str(page)]) == 1
    assert "the completion ' she was' is not in the page text" in capsys.readouterr().out


def test_the_browser_profile_is_removed_on_quit(chromium) -> None:
    # ``chromium`` skips this where no browser exists; a second browser is started here.
    with chromium_driver() as driver:
        profile = Path(driver.capabilities["chrome"]["userDataDir"])
        assert profile.is_dir() and profile.name.startswith("mechlab-chrome-")
    assert not profile.exists()
