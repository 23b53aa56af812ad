"""The browser harness itself: it must see what a page does, or the report tests prove nothing."""

from pathlib import Path

from tests.browser.harness import visit


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
