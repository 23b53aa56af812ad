import importlib
import re
from pathlib import Path

import pytest

from mechlab.detectors import DetectorRegistry
from mechlab.errors import InputError
from mechlab.report.settings import ExplainSettings


@pytest.mark.parametrize(
    "changes",
    [
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"step": 3, "max_new_tokens": 3},
        {"top_heads": 0},
        {"ig_steps": 2},
        {"detector_samples": 1},
    ],
)
def test_settings_out_of_range(changes: dict[str, object]) -> None:
    name = next(k for k in changes if k != "max_new_tokens") if len(changes) > 1 else next(iter(changes))
    with pytest.raises(ValueError, match=rf"ExplainSettings\.{name}=.*out of range"):
        ExplainSettings(**changes)  # type: ignore[arg-type]


def test_target_equal_to_contrast() -> None:
    with pytest.raises(ValueError, match="target and contrast are the same token"):
        ExplainSettings(target=" she", contrast=" she")


def test_mechlab_explain_is_the_report_and_the_old_import_path_still_works(tiny) -> None:
    import inspect

    import mechlab
    import mechlab.probes.data
    from mechlab.explain import logit_lens  # the import path of earlier releases
    from mechlab.report.explain import explain

    assert mechlab.explain is explain and inspect.isfunction(mechlab.explain)
    with pytest.raises(InputError, match="This model has no tokenizer"):  # reached explain()
        mechlab.explain(tiny.model, "text", settings=ExplainSettings(detectors=()))
    assert logit_lens is mechlab.logit_lens
    assert mechlab.explain is explain  # importing the old package did not rebind the name
    assert mechlab.probes.data.ProbeDataset is mechlab.ProbeDataset
    assert {"explain", "ExplainSettings", "Explanation"} <= set(mechlab.__all__)


def test_detector_cache_key_follows_model_settings_and_detector_code(tmp_path: Path, monkeypatch) -> None:
    from mechlab.report import detector_cache

    source = tmp_path / "induction.py"
    source.write_text("SCORE = 1\n")
    monkeypatch.setattr(detector_cache, "_DETECTOR_SOURCES", [source])
    key = detector_cache._key("abc", ["induction"], 8, 0)
    assert key == detector_cache._key("abc", ["induction"], 8, 0)
    assert key != detector_cache._key("abd", ["induction"], 8, 0)
    assert key != detector_cache._key("abc", ["induction"], 8, 1)
    source.write_text("SCORE = 2\n")
    assert key != detector_cache._key("abc", ["induction"], 8, 0)


def test_detector_cache_key_follows_a_plugins_own_source(tmp_path: Path, monkeypatch) -> None:
    from mechlab.report import detector_cache

    plugin = tmp_path / "mechlab_test_plugin_source.py"
    plugin.write_text(
        "from typing import final\n"
        "from mechlab.detectors import PatternDetector\n\n\n"
        "@final\n"
        "class Echo(PatternDetector):\n"
        "    name = 'echo'\n"
        "    description = 'test plugin'\n\n"
        "    def expected_pattern(self, tokens):\n"
        "        raise NotImplementedError\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("mechlab_test_plugin_source")
    registry = DetectorRegistry.from_entry_points([]).with_detectors(module.Echo, provider="demo-plugin")
    key = detector_cache._key("abc", ["echo"], 8, 0, registry)
    assert key == detector_cache._key("abc", ["echo"], 8, 0, registry)
    plugin.write_text(plugin.read_text() + "# version 2\n")
    assert key != detector_cache._key("abc", ["echo"], 8, 0, registry)


@pytest.mark.parametrize(
    ("target", "contrast", "note"),
    [
        (" she", " he", r"^Both tokens were chosen by the user \(--target and --contrast\)\.$"),
        (
            " she",
            None,
            r"^The explained token was chosen by the user \(--target\); the contrast is the token",
        ),
        (
            None,
            " he",
            r"^The contrast token was chosen by the user \(--contrast\); the explained token is the one",
        ),
        (None, None, r"^Both tokens come from the model: the token it generated and the runner-up"),
    ],
    ids=["both", "target-only", "contrast-only", "neither"],
)
def test_report_says_who_chose_the_tokens(target: str | None, contrast: str | None, note: str) -> None:
    from mechlab.report.page import token_choice_note

    assert re.search(note, token_choice_note(target, contrast))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["  \n"], "The prompt is empty: give the text the model should continue"),
        (["text", "--out", "/nonexistent-dir/r.html"], "directory /nonexistent-dir does not exist"),
        (["text", "--json", "/nonexistent-dir/s.json"], "directory /nonexistent-dir does not exist"),
        (["text", "--ig-steps", "2"], r"ExplainSettings\.ig_steps=2 is out of range"),
    ],
    ids=["empty-prompt", "out", "json", "settings"],
)
def test_explain_refuses_cheap_mistakes_before_loading_the_model(
    args: list[str], message: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    import mechlab.cli.explain
    from mechlab.cli import main

    def load(*_: object) -> None:
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(mechlab.cli.explain, "load", load)
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "smollm2", *args]) == 2
    assert re.search(message, " ".join(capsys.readouterr().err.split()))
    assert list(tmp_path.iterdir()) == []
