"""Feature pages from one bounded pass: every number checked against the latents computed for the
whole corpus at once, the same pages whatever the batch size, and a page that escapes what it shows."""

import pytest
import torch

import mechlab
from mechlab.dictionaries.feature_report import Context, Feature, FeatureReport, bin_edges
from mechlab.dictionaries.features import feature_pages, feature_pages_many
from mechlab.dictionaries.site import attached
from mechlab.errors import InputError
from tests.unit.dictionaries.test_site import make_sae

CORPUS = torch.randint(0, 50, (23, 12), generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def everything(tiny):
    """The latents of the whole corpus in one capture, and the report from a batched pass."""
    sae = make_sae()
    with attached(tiny.model, sae, name="res") as kind:
        latents = mechlab.capture(tiny.model, CORPUS, kind.site())[kind.site()]
        report = feature_pages(tiny.model, kind, CORPUS, top=6, contexts=4, window=(3, 2), batch_size=5)
    return sae, latents, report


def test_top_contexts_are_the_sequences_where_the_latent_peaks(tiny, everything) -> None:
    _, latents, report = everything
    assert len(report.features) == 6 and report.n_tokens == CORPUS.numel()
    for feature in report.features:
        per_token = latents[..., feature.latent]
        peaks = per_token.max(1).values
        expected = peaks.topk(4).values
        got = torch.tensor([c.value for c in feature.contexts])
        torch.testing.assert_close(got, expected[expected > 0], rtol=0, atol=1e-6)
        for context in feature.contexts:
            row, pos = context.sequence, context.position
            assert float(per_token[row, pos]) == pytest.approx(context.value, abs=1e-6)
            lo = max(pos - 3, 0)
            window = per_token[row, lo : pos + 3].tolist()
            assert context.values == pytest.approx(window, abs=1e-6)
            assert context.tokens == tuple(f"#{int(t)}" for t in CORPUS[row, lo : pos + 3])
            assert context.peak == pos - lo


def test_density_histogram_and_choice_of_latents(everything) -> None:
    _, latents, report = everything
    firing = (latents > 0).sum((0, 1))
    chosen = [f.latent for f in report.features]
    assert [int(firing[i]) for i in chosen] == sorted(firing.tolist(), reverse=True)[:6]
    torch.testing.assert_close(report.frequency, firing.float() / CORPUS.numel())
    edges = bin_edges()
    for feature in report.features:
        values = latents[..., feature.latent]
        positive = values[values > 0].double()
        assert feature.n_active == positive.numel() == sum(feature.counts)
        assert feature.max_value == pytest.approx(float(positive.max()), abs=1e-6)
        assert feature.mean_active == pytest.approx(float(positive.mean()), rel=1e-5)
        expected = torch.histogram(positive, bins=edges).hist
        assert list(feature.counts) == [int(c) for c in expected]


def test_logit_effects_are_the_decoder_row_through_the_unembedding(tiny, everything) -> None:
    sae, _, report = everything
    feature = report.features[0]
    effect = sae.W_dec[feature.latent].detach() @ tiny.model.W_U.detach()
    up = effect.topk(10)
    assert [t for t, _ in feature.promoted] == [f"#{int(i)}" for i in up.indices]
    assert [v for _, v in feature.promoted] == pytest.approx(up.values.tolist(), abs=1e-5)
    assert [v for _, v in feature.suppressed] == pytest.approx(
        effect.topk(10, largest=False).values.tolist(), abs=1e-5
    )


def test_batch_size_and_chosen_latents_do_not_change_the_pages(tiny, everything) -> None:
    sae, _, report = everything
    chosen = [report.features[2].latent, report.features[0].latent]
    again = feature_pages(tiny.model, sae, CORPUS, latents=chosen, contexts=4, window=(3, 2), batch_size=23)
    assert [f.latent for f in again.features] == chosen
    assert again.features[0] == report.features[2] and again.features[1] == report.features[0]
    assert int(again.frequency.isnan().sum()) == 46  # only the chosen latents were tracked
    torch.testing.assert_close(again.frequency[chosen], report.frequency[chosen])
    assert "0 of the 2 latents tracked never fired" in again.page(id_prefix="t").render()
    assert mechlab.active_hook_count(tiny.model) == 0
    assert again.name == "sae"
    with pytest.raises(mechlab.SiteError, match="Unknown site kind 'sae'"):
        mechlab.Site("sae", 1)  # the temporary kind is gone


def test_one_pass_for_several_saes_gives_each_its_own_pages(tiny, everything) -> None:
    sae, _, report = everything
    other = make_sae(seed=1)
    chosen = [report.features[1].latent, report.features[3].latent]
    both = feature_pages_many(
        tiny.model,
        {"one": (sae, chosen), "two": (other, None)},
        CORPUS,
        top=6,
        contexts=4,
        window=(3, 2),
        batch_size=7,
    )
    alone = feature_pages(tiny.model, other, CORPUS, top=6, contexts=4, window=(3, 2), batch_size=7)
    assert both["one"].features == (report.features[1], report.features[3])
    assert both["two"].features == alone.features
    torch.testing.assert_close(both["two"].frequency, alone.frequency)
    assert both["one"].features != both["two"].features[:2]  # two different SAEs
    assert mechlab.active_hook_count(tiny.model) == 0


def test_bad_inputs_are_refused(tiny) -> None:
    sae = make_sae()
    with pytest.raises(InputError, match=r"latents 0\.\.47"):
        feature_pages(tiny.model, sae, CORPUS, latents=[3, 48])
    with pytest.raises((InputError, TypeError), match=r"n_seq, n_pos|seq seq_pos"):  # TypeError: jaxtyping
        feature_pages(tiny.model, sae, CORPUS[0])
    with pytest.raises(InputError, match=r"corpus of token ids \[n_seq, n_pos\]"):
        feature_pages(tiny.model, sae, CORPUS[:0])
    with pytest.raises(InputError, match="contexts, batch_size ≥ 1"):
        feature_pages(tiny.model, sae, CORPUS, contexts=0)


def test_the_page_is_offline_and_escapes_token_text() -> None:
    hostile = ("<script>alert(1)</script>", " a", "\u202e")
    feature = Feature(
        latent=5,
        contexts=(Context(hostile, (0.5, 2.0, 0.0), 1, 3, 7),),
        n_tokens=100,
        n_active=2,
        max_value=2.0,
        mean_active=1.25,
        counts=tuple(1 if i in (79, 86) else 0 for i in range(len(bin_edges()) - 1)),
        promoted=(("</td><b>", 1.5),),
        suppressed=(("&amp;", -0.5),),
    )
    report = FeatureReport("res", "resid_post.1", (feature,), 100, "a test", torch.zeros(8))
    html = report.page(id_prefix="t").render()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "</td><b>" not in html and "&lt;/td&gt;&lt;b&gt;" in html and "&amp;amp;" in html
    assert "&lt;U+202E&gt;" in html and "\u202e" not in html
    assert 'id="res-latent-5"' in html and 'href="#res-latent-5"' in html
    assert "density 2.000%" in html and "seq 3, pos 7: 2" in html
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
