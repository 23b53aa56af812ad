"""Fixtures for the compat tests: seeded Llamas with learned norm weights, and SmolLM2 loaded once
through ``mechlab.compat``."""

from pathlib import Path

import pytest

from mechlab.compat import HookedTransformer
from tests.compat.helpers import save_llama


@pytest.fixture(scope="session")
def llama_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"untied": DIR, "tied": DIR}``: the two seeded Llamas of ``save_llama``."""
    root = tmp_path_factory.mktemp("compat-llama")
    return {kind: save_llama(root / kind, tied=kind == "tied") for kind in ("untied", "tied")}


@pytest.fixture(scope="session")
def ht_smollm2() -> HookedTransformer:
    """SmolLM2 through ``HookedTransformer.from_pretrained`` (HookedTransformer's default processing),
    loaded once. Its own copy: processing changes the weights in place, so it is never the shared
    ``smollm2`` fixture's model."""
    return HookedTransformer.from_pretrained("smollm2")
