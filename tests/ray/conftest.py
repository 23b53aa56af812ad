"""The Ray tests: one Ray executor for the session, on the cluster CI starts or on a local instance.

CI starts a head on the loopback interface (``ray start --head --node-ip-address 127.0.0.1
--num-cpus 2``) and these tests join it (``address="auto"``); without one they start a local
instance of two CPUs themselves, with a small object store. Every test here is marked ``ray``.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Object store of a local instance: the tests' payloads and results are kilobytes to a few megabytes.
STORE_BYTES = 96 * 1024**2


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray: runs sweeps on a Ray cluster (tests/ray; skipped without ray)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """A Ray executor with two workers: on the running head if there is one, else a local instance."""
    pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from mechlab.executors.ray import Ray

    executor = Ray(address="auto", num_workers=2)
    try:
        executor.connect()
    except ConnectionError:
        executor = Ray(num_workers=2, num_cpus=2, object_store_memory=STORE_BYTES)
        executor.connect()
    yield executor
    executor.close()
