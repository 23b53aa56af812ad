"""SAE latents on SmolLM2 end to end: ``mechlab sae features`` writes feature pages from the offline
corpus, and ``mechlab explain --sae DIR`` adds the latent section whose links reach those pages.

The SAE is a seeded, untrained TopK SAE saved in SAELens's layout: these tests check the plumbing
(commands, files, numbers against the model), not what a trained SAE finds."""

import json
import re
from pathlib import Path

import pytest

import mechlab
from mechlab.cli import main
from mechlab.dictionaries import SAE, SAEConfig

pytestmark = pytest.mark.smollm2

NURSE = "The nurse was tired because"


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SAEConfig(
        d_in=576, d_sae=256, architecture="topk", k=16, site="resid_post.15", model_name="smollm2"
    )
    return SAE(cfg, seed=3).save(tmp_path_factory.mktemp("saes") / "res15")


def _features_cli(argv: list[str]) -> int:
    return main(["sae", "features", *argv])


def test_features_command_writes_pages_from_the_corpus(smollm2, sae_dir: Path, tmp_path: Path) -> None:
    out, summary = tmp_path / "features.html", tmp_path / "features.json"
    argv = [str(sae_dir), "--top", "5", "--tokens", "1024", "--contexts", "3", "--html", str(out)]
    assert _features_cli([*argv, "--json", str(summary)]) == 0
    html = out.read_text()
    data = json.loads(summary.read_text())
    assert len(data["features"]) == 5 and data["n_tokens"] == 1024
    for feature in data["features"]:
        assert f'id="res15-latent-{feature["latent"]}"' in html
        assert len(feature["contexts"]) == 3 and len(feature["promoted"]) == 10
        assert feature["contexts"][0]["max"] >= feature["contexts"][-1]["max"] > 0
    densities = [f["density"] for f in data["features"]]
    assert densities == sorted(densities, reverse=True) and densities[0] > 0
    assert "offline corpus" in html and "https://" not in html
    # the pages for chosen latents give the same numbers for those latents
    chosen = [data["features"][1]["latent"], data["features"][0]["latent"]]
    again = tmp_path / "again.json"
    argv = [str(sae_dir), "--latents", *map(str, chosen), "--tokens", "1024", "--contexts", "3"]
    assert _features_cli([*argv, "--html", str(tmp_path / "again.html"), "--json", str(again)]) == 0
    pages = json.loads(again.read_text())["features"]
    assert [p["latent"] for p in pages] == chosen
    assert pages[0] == data["features"][1]


@pytest.mark.slow
def test_explain_with_an_sae_links_latents_to_their_pages(smollm2, sae_dir: Path, tmp_path: Path) -> None:
    out, summary = tmp_path / "report.html", tmp_path / "report.json"
    argv = ["explain", "smollm2", NURSE, "--contrast", " he", "--max-new-tokens", "2", "--no-detectors"]
    argv += ["--ig-steps", "8", "--sae", str(sae_dir), "--top-latents", "4", "--sae-tokens", "1024"]
    assert main([*argv, "--out", str(out), "--json", str(summary)]) == 0
    html = out.read_text()
    found = json.loads(summary.read_text())["saes"]
    assert len(found) == 1 and found[0]["name"] == "res15" and found[0]["site"] == "resid_post.15"
    latents = found[0]["latents"]
    assert 4 <= len(latents) <= 8 and found[0]["n_active"] == 16  # TopK: k latents at the position
    links = re.findall(r'href="#(res15-latent-\d+)"', html)
    anchors = set(re.findall(r'id="(res15-latent-\d+)"', html))
    assert {f"res15-latent-{f['latent']}" for f in latents} == set(links) == anchors
    assert "Which dictionary latents are active (res15 at resid_post.15)" in html
    assert mechlab.active_hook_count(smollm2.model) == 0
