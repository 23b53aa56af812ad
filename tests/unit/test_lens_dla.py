"""Logit lens and direct logit attribution: the invariants that pin them down."""

import pytest
import torch

import mechlab
from mechlab.explain import direct_logit_attribution, logit_lens, make_target
from mechlab.explain.targets import Target
from mechlab.metrics import AnswerLogit


@pytest.mark.parametrize("name", ["tiny", "tiny_gqa", "attn_only"])
def test_dla_terms_sum_to_the_logit(name: str, request: pytest.FixtureRequest, tokens: torch.Tensor) -> None:
    model = request.getfixturevalue(name).model
    with torch.no_grad():
        logits = model(tokens[:1])
    for target, contrast, pos in ((5, None, -1), (5, 17, -1), (30, 2, 4)):
        dla = direct_logit_attribution(model, tokens[0], target, contrast=contrast, pos=pos)
        expected = logits[0, pos, target] - (logits[0, pos, contrast] if contrast is not None else 0)
        assert abs(dla.value - float(expected)) < 1e-5
        assert abs(dla.total - dla.value) < 1e-4 and abs(dla.remainder) < 1e-4
        assert dla.heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
        torch.testing.assert_close(dla.attn, dla.heads.sum(-1) + dla.attn_bias)


def test_dla_head_terms_are_each_heads_own_output(
    tiny_gqa: mechlab.LoadedModel, tokens: torch.Tensor
) -> None:
    """A query head's term is its z times its own W_O (GQA shares K/V, not W_O), centred, divided
    by the frozen final-norm scale, and read along ln_final.w ⊙ W_U[:, answer]."""
    model = tiny_gqa.model
    dla = direct_logit_attribution(model, tokens[0], 5)
    site, scale_site = mechlab.Site("z", 1, head=3), mechlab.Site("ln_final_scale")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[:1], names_filter=[site.hook_name, scale_site.hook_name])
        out = cache[site.hook_name][0, -1, 3] @ model.W_O[1, 3]
        direction = model.ln_final.weight * model.W_U[:, 5]
        expected = float(((out - out.mean()) / cache[scale_site.hook_name][0, -1, 0]) @ direction)
    assert abs(float(dla.heads[1, 3]) - expected) < 1e-5


def test_dla_takes_a_token_target_but_not_a_custom_metric(
    tiny: mechlab.LoadedModel, tokens: torch.Tensor
) -> None:
    logprob = make_target(tiny.model, 5, contrast=9, kind="logprob")
    dla = direct_logit_attribution(tiny.model, tokens[0], logprob)
    assert dla.target.startswith("logit(") and abs(dla.remainder) < 1e-4
    with pytest.raises(mechlab.InputError, match="token target"):
        direct_logit_attribution(tiny.model, tokens[0], Target(AnswerLogit(5), "custom"))


def test_logit_lens_last_row_is_the_models_logits(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    model = tiny.model
    with torch.no_grad():
        logits = model(tokens[:1])
    for pos in (-1, 3):
        lens = logit_lens(model, tokens[0], pos=pos, targets=(7, 8))
        torch.testing.assert_close(lens.logits[-1], logits[0, pos], atol=1e-5, rtol=1e-5)
        assert lens.logits.shape == (model.cfg.n_layers + 1, model.cfg.d_vocab)
        assert lens.labels[0] == "L0 pre" and lens.labels[-1] == "final"
        assert lens.target_log_probs().shape == (model.cfg.n_layers + 1, 2)
        assert int(lens.ranks(int(logits[0, pos].argmax()))[-1]) == 0


def test_logit_lens_first_row_reads_the_embeddings(
    attn_only: mechlab.LoadedModel, tokens: torch.Tensor
) -> None:
    model = attn_only.model
    lens = logit_lens(model, tokens[0])
    site = mechlab.Site("resid_pre", 0)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[:1], names_filter=[site.hook_name])
        expected = model.ln_final(cache[site.hook_name])[0, -1] @ model.W_U + model.b_U
    torch.testing.assert_close(lens.logits[0], expected, atol=1e-5, rtol=1e-5)


def test_results_render_and_inputs_stay_untouched(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    before = tokens.clone()
    dla = direct_logit_attribution(tiny.model, tokens[0], 5)
    lens = logit_lens(tiny.model, tokens[0])
    assert torch.equal(tokens, before)
    page = lens.page()
    dla.add_to(page)
    html = page.render()
    assert "Logit lens" in html and "Direct logit attribution" in html and html.count("data:image/png") == 3
    assert "<script" not in html
    with pytest.raises(mechlab.InputError, match="outside the prompt"):
        logit_lens(tiny.model, tokens[0], pos=40)
