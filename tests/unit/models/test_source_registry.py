"""Model sources are an extension point: built-ins and plugins register the same way, an unknown
scheme lists what is installed, a clash names both providers, and a broken plugin breaks only itself."""

import pytest
import torch

import mechlab
from mechlab.errors import DuplicateSourceError, SourceError, SourcePluginError
from mechlab.models.load import default_sources
from mechlab.models.sources import Resolved, Source, SourceRegistry
from mechlab.models.sources.gguf import GGUFSource
from mechlab.toy.source import ToySource
from tests.unit.detectors.test_detectors import FakeDist, FakeEntryPoint


class SeededToySource(Source):
    """A new source in a few lines: ``seeded:N`` is the ``tiny`` toy with seed N."""

    scheme = "seeded"
    forms = ("seeded:N                    the tiny toy model with seed N",)

    def resolve(self, rest: str) -> Resolved:
        return Resolved("toy", f"tiny,seed={int(rest)}")


class ClaimsEverything(Source):
    scheme = "greedy"

    def claims(self, text: str) -> bool:
        return True


class ClaimsGGUFFiles(Source):
    scheme = "other-gguf"
    priority = GGUFSource.priority

    def claims(self, text: str) -> bool:
        return text.endswith(".gguf")


def test_the_built_in_sources_are_registered_as_entry_points() -> None:
    registry = default_sources()
    assert {"bundled", "gguf", "hf", "hub", "ollama", "toy"} <= set(registry.schemes())
    assert all(registry.entries[s].provider == "mechlab" for s in ("gguf", "toy"))


def test_a_new_source_is_one_class_and_one_registration() -> None:
    registry = default_sources().with_sources(SeededToySource)
    loaded = mechlab.load_model("seeded:3", sources=registry)
    same = mechlab.load_model("toy:tiny,seed=3")
    assert loaded.info.source == "seeded:3"
    tokens = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded.model(tokens), same.model(tokens))
    assert "seeded:N" in registry.forms()
    with pytest.raises(SourceError, match="Unknown scheme 'seeded'"):
        mechlab.load_model("seeded:3")  # not installed in the default registry


def test_an_unknown_scheme_lists_every_installed_source() -> None:
    registry = default_sources().with_sources(SeededToySource)
    with pytest.raises(SourceError, match=r"(?s)known schemes are .*seeded:.*seeded:N .*the tiny toy"):
        registry.resolve("nope:x")


def test_two_packages_registering_one_scheme_are_named_and_the_rest_still_works() -> None:
    points = [
        FakeEntryPoint("toy", "mechlab.toy.source:ToySource", FakeDist("mechlab"), ToySource),
        FakeEntryPoint("toy", "other_pkg:ToySource", FakeDist("other-pkg"), ToySource),
        FakeEntryPoint("seeded", "x:SeededToySource", FakeDist("seeds"), SeededToySource),
    ]
    registry = SourceRegistry.from_entry_points(points)
    with pytest.raises(
        DuplicateSourceError, match=r"'toy': mechlab \(.*\) and other-pkg \(other_pkg:ToySource\)"
    ):
        registry.get("toy")
    assert registry.get("seeded").resolve("1") == ("toy", "tiny,seed=1")
    with pytest.raises(DuplicateSourceError, match="'seeded'"):
        registry.with_sources(SeededToySource)


def test_a_broken_plugin_breaks_only_itself() -> None:
    points = [
        FakeEntryPoint("broken", "bad:Thing", FakeDist("bad"), ImportError("no module named bad")),
        FakeEntryPoint("notasource", "bad:Other", FakeDist("bad"), object),
        FakeEntryPoint("toy", "mechlab.toy.source:ToySource", FakeDist("mechlab"), ToySource),
    ]
    registry = SourceRegistry.from_entry_points(points)
    with pytest.raises(SourcePluginError, match=r"'broken' from bad \(bad:Thing\) could not be loaded"):
        registry.get("broken")
    with pytest.raises(SourcePluginError, match=r"not a subclass of mechlab\.models\.sources\.Source"):
        registry.get("notasource")
    assert registry.resolve("toy:tiny") == ("toy", "tiny")


def test_two_sources_claiming_a_string_at_one_priority_must_be_told_apart(tmp_path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    registry = default_sources().with_sources(ClaimsGGUFFiles)
    with pytest.raises(DuplicateSourceError, match=r"claimed by more than one .*gguf:.*other-gguf:"):
        registry.resolve(str(path))
    assert registry.resolve(f"gguf:{path}") == ("gguf", str(path))
    # A claim at a lower priority than the Hub's fallback wins over it; the Hub claims bare names.
    greedy = default_sources().with_sources(ClaimsEverything)
    assert greedy.resolve("gpt2").scheme == "greedy"
    assert default_sources().resolve("gpt2") == ("hub", "gpt2")
