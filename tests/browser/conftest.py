from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.harness import CHROMIUM_CANDIDATES, DRIVER_CANDIDATES, chromium_driver, find


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if find(CHROMIUM_CANDIDATES, "chromium") is None or find(DRIVER_CANDIDATES, "chromedriver") is None:
        pytest.skip("needs Debian's chromium and chromium-driver (CI installs them)")
    with chromium_driver() as driver:
        yield driver
