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
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:")


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
