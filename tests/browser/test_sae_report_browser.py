"""The explain report with an SAE section in headless Chromium: it still passes ``report_problems``
(offline, no console error, widgets drawn), every latent link lands on its feature card, and each
card's histogram image and highlighted context tokens are drawn."""

from pathlib import Path

import pytest

from mechlab.dictionaries import SAE, SAEConfig
from mechlab.report.explain import explain
from mechlab.report.settings import ExplainSettings
from tests.browser.harness import report_problems, visit


@pytest.mark.smollm2
@pytest.mark.slow
def test_sae_links_reach_their_feature_cards(chromium, smollm2, tmp_path: Path) -> None:
    cfg = SAEConfig(d_in=576, d_sae=256, architecture="topk", k=16, site="resid_post.15")
    settings = ExplainSettings(max_new_tokens=2, detectors=(), ig_steps=8, top_latents=3)
    prompt = "The nurse was tired because"
    texts = [f"{prompt} she had worked all night.", "The doctor said that he would come back tomorrow."]
    corpus = smollm2.model.to_tokens(texts)  # the listed latents fire on the prompt's own tokens
    saes = {"res15": SAE(cfg, seed=3)}
    explanation = explain(smollm2, prompt, settings=settings, saes=saes, sae_corpus=corpus)
    seen = visit(chromium, explanation.save(tmp_path / "report.html"), settle_s=3)
    driver = seen.driver
    assert report_problems(seen, explanation.completion.text) == []
    links = driver.find_elements("css selector", 'a[href^="#res15-latent-"]')
    assert len(links) == len(explanation.saes[0].latents) >= 3
    for link in links:
        anchor = link.get_attribute("href").split("#")[1]
        driver.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", link)
        landed = driver.execute_script(
            "var el = document.getElementById(arguments[0]); var box = el.getBoundingClientRect();"
            "return [location.hash, box.top > -2 && box.top < window.innerHeight, box.top];",
            anchor,
        )
        assert landed[:2] == [f"#{anchor}", True], landed
        card = driver.execute_script("return document.getElementById(arguments[0]).parentElement;", anchor)
        images = card.find_elements("css selector", "img")
        assert images and all(
            driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images
        )
        assert card.find_elements("css selector", ".contexts span.tok")
