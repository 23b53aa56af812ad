"""Ollama stores are read defensively: names and digests match Ollama's grammar before any path is
built, every path stays inside the store, and a blob must hold what its name says."""

import json
from pathlib import Path

import pytest

import mechlab
from mechlab import CorruptModelError, SourceError
from mechlab.models import ollama
from tests.unit.models.test_sources import make_store


def _manifest(store: Path, name: str = "smollm2", tag: str = "135m") -> Path:
    return store / "manifests" / "registry.ollama.ai" / "library" / name / tag


def _set_digest(store: Path, digest: object) -> None:
    path = _manifest(store)
    data = json.loads(path.read_text())
    data["layers"][0]["digest"] = digest
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "name",
    [
        "m:../../../../etc/passwd",
        "../x:1",
        "m:.hidden",
        "a/../b:1",
        "ns/m:t\x00",
        "m:" + "t" * 81,
        "host:99/ns/m",
    ],
)
def test_names_outside_ollamas_grammar_are_refused_before_any_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(SourceError, match="Malformed Ollama model name"):
        ollama.resolve(name, tmp_path)


@pytest.mark.parametrize("digest", ["../../../etc/hostname", "sha256:../../x", 7, None, "sha256:" + "a" * 63])
def test_digests_that_are_not_sha256_hex_are_refused(tmp_path: Path, digest: object) -> None:
    make_store(tmp_path, b"GGUF-bytes")
    _set_digest(tmp_path, digest)
    with pytest.raises(CorruptModelError, match="not a sha256:<64 hex digits> digest") as caught:
        ollama.resolve("smollm2:135m", tmp_path)
    assert "root:" not in str(caught.value)


def test_a_blob_whose_sha256_differs_from_its_name_is_refused(tmp_path: Path) -> None:
    blob = make_store(tmp_path, b"GGUF-bytes")
    blob.write_bytes(b"GGUF-other")
    with pytest.raises(CorruptModelError, match="does not hold what its name says"):
        ollama.resolve("smollm2:135m", tmp_path)


def test_a_blob_linking_outside_the_store_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    blob = make_store(store, b"GGUF-bytes")
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF-bytes")
    blob.unlink()
    blob.symlink_to(outside)
    with pytest.raises(CorruptModelError, match="leads outside the store"):
        ollama.resolve("smollm2:135m", store)


def test_an_unreadable_or_broken_manifest_is_an_error(tmp_path: Path, monkeypatch) -> None:
    make_store(tmp_path, b"GGUF-bytes")
    _manifest(tmp_path).write_text("not json")
    with pytest.raises(CorruptModelError, match="has no readable layer"):
        ollama.resolve("smollm2:135m", tmp_path)

    def unreadable(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(CorruptModelError, match="cannot be read: Permission denied"):
        ollama.resolve("smollm2:135m", tmp_path)


def test_a_good_store_still_loads_through_the_source(tmp_path: Path, monkeypatch) -> None:
    blob = make_store(tmp_path, b"GGUF-bytes")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    assert ollama.resolve("smollm2:135m") == blob.resolve()
    assert mechlab.models.load.resolve_source("ollama:smollm2:135m") == ("gguf", str(blob.resolve()))
