"""Open a local HTML file in headless Chromium with networking disabled and report what happened.

Uses Debian's ``chromium`` and ``chromium-driver`` through selenium with an explicit driver path,
so nothing downloads a browser or driver. Chromium runs with a fresh profile and with every host
resolving nowhere, and the DevTools performance log records every request the page attempts.
"""

import dataclasses
import json
import shutil
import tempfile
import time
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


def chromium_driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find(CHROMIUM_CANDIDATES, "chromium"), find(DRIVER_CANDIDATES, "chromedriver")
    if browser is None or driver_path is None:
        raise FileNotFoundError(
            "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        )
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
        f"--user-data-dir={tempfile.mkdtemp(prefix='mechlab-chrome-')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.set_capability("unhandledPromptBehavior", "ignore")
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


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


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.browser.harness PAGE.html OUT.png [--at HEADING]``: screenshot a page offline.

    ``--at`` scrolls the ``<h2>`` whose text starts with HEADING to the top first.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--at", metavar="HEADING")
    args = parser.parse_args(argv)
    driver = chromium_driver()
    try:
        seen = visit(driver, args.page, settle_s=4)
        if seen.external_requests or seen.console_errors:
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
    finally:
        driver.quit()
    args.png.write_bytes(screenshot)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
