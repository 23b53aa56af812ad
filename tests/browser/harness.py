"""Open a local HTML file in headless Chromium with networking disabled and report what happened.

Uses Debian's ``chromium`` and ``chromium-driver`` through selenium with an explicit driver path,
so nothing downloads a browser or driver. Chromium runs with a fresh profile (a temporary directory
removed when the browser quits) and with every host resolving nowhere, and the DevTools performance
log records every request the page attempts.

``report_problems`` holds what a ``mechlab explain`` report must show in a browser; the browser test
and ``python -m tests.browser.harness --check REPORT.html`` (``make demo-check``) both use it.
"""

import argparse
import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
# chrome:// and chrome-error:// are the browser's own resources, never fetched from a network.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-error:")


def find(candidates: tuple[str, ...], name: str) -> str | None:
    return next((c for c in candidates if Path(c).is_file()), None) or shutil.which(name)


@dataclasses.dataclass
class PageVisit:
    """What a page did when opened: console errors, requests, dialogs, and a screenshot."""

    console_errors: list[str]
    requests: list[str]
    dialogs: list[str]
    screenshot: bytes
    driver: Any

    @property
    def external_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]


@contextlib.contextmanager
def chromium_driver() -> Iterator[Any]:
    """A headless Chromium (selenium driver) with a fresh profile; quits it and removes the profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find(CHROMIUM_CANDIDATES, "chromium"), find(DRIVER_CANDIDATES, "chromedriver")
    if browser is None or driver_path is None:
        raise FileNotFoundError(
            "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        )
    with tempfile.TemporaryDirectory(prefix="mechlab-chrome-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--disable-default-apps",
            "--disable-extensions",
            "--window-size=1280,2000",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        options.set_capability("unhandledPromptBehavior", "ignore")
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def visit(driver: Any, path: Path, *, settle_s: float = 1.5) -> PageVisit:
    """Open ``path`` (a local file), wait for scripts to settle, and collect what happened."""
    from selenium.common.exceptions import NoAlertPresentException

    driver.get_log("performance")  # drop events from earlier pages
    driver.get_log("browser")
    driver.get(path.resolve().as_uri())
    time.sleep(settle_s)
    dialogs = []
    try:
        alert = driver.switch_to.alert
        dialogs.append(alert.text)
        alert.dismiss()
    except NoAlertPresentException:
        pass
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return PageVisit(errors, requests, dialogs, driver.get_screenshot_as_png(), driver)


IG_HEADING = "Which prompt tokens pushed it (Integrated Gradients)"
ATTENTION_HEADING = "Where those heads look"
_SECTION = (
    "return Array.from(document.querySelectorAll('section'))"
    ".find(s => s.querySelector('h2')?.textContent.startsWith(arguments[0])) || null"
)


def report_problems(seen: PageVisit, completion: str) -> list[str]:
    """What is wrong with an opened ``mechlab explain`` report; empty when nothing is.

    The report must fetch nothing, log no console error, open no dialog, draw its attention widgets
    (circuitsvis renders each into many DOM elements), show ``completion`` (whitespace-normalised)
    in its text, and show the Integrated Gradients section: coloured prompt tokens, the completeness
    error and the loaded figure.
    """
    driver = seen.driver
    problems = []
    if seen.external_requests:
        problems.append(f"requests left the page: {seen.external_requests}")
    if seen.console_errors:
        problems.append(f"console errors: {seen.console_errors}")
    if seen.dialogs:
        problems.append(f"dialogs opened: {seen.dialogs}")
    attention = driver.execute_script(_SECTION, ATTENTION_HEADING)
    widgets = [] if attention is None else attention.find_elements("css selector", ".widget")
    if not widgets:
        problems.append(f"no attention widget in a section {ATTENTION_HEADING!r}")
    elif not all(len(w.find_elements("css selector", "*")) > 10 for w in widgets):
        problems.append("an attention widget was not drawn (too few elements inside it)")
    body = " ".join(driver.find_element("tag name", "body").text.split())
    if not completion.strip() or " ".join(completion.split()) not in body:
        problems.append(f"the completion {completion!r} is not in the page text")
    ig = driver.execute_script(_SECTION, IG_HEADING)
    if ig is None:
        problems.append(f"no section {IG_HEADING!r}")
    else:
        if "completeness error" not in ig.text:
            problems.append("the Integrated Gradients section shows no completeness error")
        if not ig.find_elements("css selector", "span.tok"):
            problems.append("the Integrated Gradients section shows no coloured tokens")
        figures = ig.find_elements("css selector", "img")
        if not figures or not all(
            driver.execute_script("return arguments[0].naturalWidth", f) > 0 for f in figures
        ):
            problems.append("the Integrated Gradients figure did not load")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Open a page offline in headless Chromium.

    ``python -m tests.browser.harness PAGE.html OUT.png [--at HEADING]`` saves a screenshot; ``--at``
    scrolls the ``<h2>`` whose text starts with HEADING to the top first.
    ``python -m tests.browser.harness --check REPORT.html [--summary SUMMARY.json]`` checks a
    ``mechlab explain`` report as the browser test does (the completion comes from the ``--json``
    summary, by default summary.json beside the report) and exits 1 listing what is wrong.
    """
    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path, nargs="?", help="screenshot to write")
    parser.add_argument("--at", metavar="HEADING")
    parser.add_argument("--check", action="store_true", help="check a mechlab explain report")
    parser.add_argument("--summary", type=Path, help="its --json summary (default: summary.json beside it)")
    args = parser.parse_args(argv)
    if args.png is None and not args.check:
        parser.error("give OUT.png to take a screenshot, or --check to check a report")
    if not args.page.is_file():
        parser.error(f"{args.page} does not exist; run `make demo` (or mechlab explain) first")
    completion = None
    if args.check:
        summary = args.summary or args.page.with_name("summary.json")
        if not summary.is_file():
            parser.error(f"{summary} does not exist; pass the report's --json file with --summary")
        completion = json.loads(summary.read_text())["completion"]
    with chromium_driver() as driver:
        seen = visit(driver, args.page, settle_s=4)
        if completion is not None:
            problems = report_problems(seen, completion)
            for problem in problems:
                print(f"{args.page}: {problem}")
            if problems:
                return 1
            print(f"{args.page}: offline, no console errors, attention drawn, completion and IG shown")
        elif seen.external_requests or seen.console_errors:
            print(f"requests: {seen.external_requests}\nconsole errors: {seen.console_errors}")
            return 1
        screenshot = seen.screenshot
        if args.at:
            found = driver.execute_script(
                "const h = Array.from(document.querySelectorAll('h2'))"
                ".find(e => e.textContent.startsWith(arguments[0]));"
                "if (h) { h.scrollIntoView(); } return Boolean(h);",
                args.at,
            )
            if not found:
                print(f"no <h2> starting with {args.at!r} in {args.page}")
                return 1
            time.sleep(0.5)
            screenshot = driver.get_screenshot_as_png()
    if args.png is not None:
        args.png.write_bytes(screenshot)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
