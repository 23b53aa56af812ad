"""Test configuration: no network, tiny seeded models for unit tests, SmolLM2 for integration.

Hugging Face offline mode is switched on before anything imports transformers, and every socket
connection outside loopback fails the test that made it.
"""

import errno
import os
import socket
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

import mechlab
from mechlab.toy import cached_induction_toy
from tests.tiny_llama import save_tiny_llama

# The fixed-layout control reaches its verdicts (positional layer-0 heads, no previous-token head)
# by 100 steps; 200 gave the same verdicts.
POSITIONAL_STEPS = 100

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: object) -> object:
    host = address[0] if isinstance(address, tuple) else address
    if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
        return _real_connect(self, address)
    raise RuntimeError(f"Tests must not touch the network (connection to {address!r}).")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


class _FullDisk:
    """A file object whose ``write`` stores half of the data, then fails as a full disk does."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, data: bytes) -> int:
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self) -> int:
        return int(self.file.fileno())

    def __enter__(self) -> "_FullDisk":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


@pytest.fixture
def disk_full_mid_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files opened with ``os.fdopen`` (mechlab's atomic writes) fail after half their content."""
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: _FullDisk(real_fdopen(*args, **kwargs)))


@pytest.fixture(scope="session")
def tiny() -> mechlab.LoadedModel:
    """A 2-layer model with MLPs (seed 0)."""
    return mechlab.load_model("toy:tiny")


@pytest.fixture(scope="session")
def tiny_gqa() -> mechlab.LoadedModel:
    """Like ``tiny`` with 2 key/value heads for 4 query heads."""
    return mechlab.load_model("toy:tiny-gqa")


@pytest.fixture(scope="session")
def attn_only() -> mechlab.LoadedModel:
    """The untrained attention-only 2-layer preset."""
    return mechlab.load_model("toy:attn-only-2l")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> mechlab.LoadedModel:
    """A seeded 2-layer Llama (4 heads, 2 key/value heads, vocab 50) loaded from a Hugging Face
    directory. Unlike the TransformerLens-native toys, its blocks keep a key/value cache, so
    patching can run in "prefix" mode on it."""
    directory = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), vocab_size=50, initializer_range=0.1)
    return mechlab.load_model(str(directory))


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and corrupted token batches ``[2, 7]`` for the tiny models, differing at position 3."""
    generator = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 50, (2, 7), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 5) % 50
    return clean, corrupted


@pytest.fixture(scope="session")
def smollm2() -> mechlab.LoadedModel:
    """The bundled SmolLM2-135M-Instruct, converted once per cache directory."""
    return mechlab.load_model("smollm2")


@pytest.fixture(scope="session")
def gemma3() -> mechlab.LoadedModel:
    """Gemma 3 270M (Q4_K_M), joined from its chunk packages and converted once per cache directory."""
    return mechlab.load_model("gemma3-270m")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "toy" in item.path.relative_to(config.rootpath).parts:
            item.add_marker(pytest.mark.toy)
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.smollm2)
        if "browser" in item.path.parts:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def induction_toy() -> mechlab.TrainedToy:
    """toy:attn-only-2l trained on the random layout (the default config). Trained once per cache
    key (~55 s on an idle CPU), then loaded from mechlab's cache (``mechlab.toy.cached_induction_toy``)."""
    return cached_induction_toy(mechlab.ToyTrainConfig(layout="random"))


@pytest.fixture(scope="session")
def induction_toy_dir(induction_toy: mechlab.TrainedToy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``induction_toy`` saved as a checkpoint directory (load it as ``toy:DIR``)."""
    return induction_toy.save(tmp_path_factory.mktemp("induction-toy"))


@pytest.fixture(scope="session")
def positional_toy() -> mechlab.TrainedToy:
    """The negative control: the same model trained on the fixed layout (BOS, r, r), 100 steps
    (cached like ``induction_toy``)."""
    return cached_induction_toy(mechlab.ToyTrainConfig(layout="fixed", steps=POSITIONAL_STEPS))
