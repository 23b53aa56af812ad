"""The example plugin in examples/detector-plugin, installed with pip from its local path."""

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mechlab
from mechlab import cli

PLUGIN = Path(__file__).parents[3] / "examples" / "detector-plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin pip-installed (offline, no dependencies) into a fresh target directory."""
    source = tmp_path_factory.mktemp("plugin-src") / "detector-plugin"
    shutil.copytree(PLUGIN, source)  # build artefacts land in the copy, not in the repository
    target = tmp_path_factory.mktemp("plugin-site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    command += ["--no-build-isolation", "--target", str(target), str(source)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return target


def test_installed_plugin_is_discovered_by_name(
    plugin_site: Path, monkeypatch: pytest.MonkeyPatch, attn_only: mechlab.LoadedModel
) -> None:
    assert "local-window" not in mechlab.DetectorRegistry.from_entry_points()
    monkeypatch.syspath_prepend(str(plugin_site))
    importlib.invalidate_caches()
    registry = mechlab.DetectorRegistry.from_entry_points()
    assert registry.entry("local-window").provider == "mechlab-local-window"
    report = mechlab.run_detectors(attn_only.model, ["local-window", "previous-token"], n_samples=4)
    assert report.failures == {}
    window, previous = report["local-window"].scores, report["previous-token"].scores
    assert window.shape == (2, 4)
    assert (window >= previous - 1e-6).all()  # the window contains the previous position


def test_cli_lists_the_plugin_with_its_provider(
    plugin_site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(plugin_site))  # as if installed next to mechlab
    importlib.invalidate_caches()
    assert cli.main(["detectors"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "local-window" in line)
    assert "mechlab-local-window" in line
