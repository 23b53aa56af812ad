"""Logit lens and direct logit attribution: the invariants that pin them down."""

import pytest
import torch

import mechlab
from mechlab import direct_logit_attribution, logit_lens, make_target
from mechlab.metrics import AnswerLogit
from mechlab.targets import Target


@pytest.mark.parametrize("name", ["tiny", "tiny_gqa", "attn_only", "tiny_llama"])
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


def test_dla_remainder_catches_what_no_component_wrote(tiny_llama: mechlab.LoadedModel, tokens) -> None:
    """A vector added to layer 0's attention output (downstream of every head's z) is written by no
    component DLA knows: it must appear in ``remainder``, not be absorbed by another term."""
    model = tiny_llama.model
    extra = torch.randn(32, generator=torch.Generator().manual_seed(4))
    clean = direct_logit_attribution(model, tokens[0], 5, contrast=9)
    with mechlab.hooked(model, {mechlab.Site("attn_out", 0): lambda act, site: act + extra}):
        shifted = direct_logit_attribution(model, tokens[0], 5, contrast=9)
        _, cache = model.run_with_cache(tokens[:1], names_filter=[mechlab.Site("ln_final_scale").hook_name])
    scale = cache[mechlab.Site("ln_final_scale").hook_name][0, -1, 0]
    with torch.no_grad():
        expected = float(extra / scale * model.ln_final.weight @ (model.W_U[:, 5] - model.W_U[:, 9]))
    assert abs(expected) > 0.05 and abs(clean.remainder) < 1e-5
    assert abs(shifted.remainder - expected) < 1e-4
    # Layer 0's heads are upstream of the edit: their terms change only through the norm scale.
    torch.testing.assert_close(shifted.heads[0] * shifted.scale, clean.heads[0] * clean.scale)
    assert float(shifted.attn_bias.abs().max()) == 0.0  # bias-free attention: b_O terms are zero


def test_dla_output_bias_terms_are_b_o(tokens) -> None:
    model = mechlab.load_model("toy:tiny,seed=3").model
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("attn._original_component.o._original_component.bias"):
                param.copy_(torch.randn(param.shape, generator=generator))
    assert float(model.b_O.detach().abs().min()) > 0  # the biases reached the model
    dla = direct_logit_attribution(model, tokens[0], 5)
    assert abs(dla.remainder) < 1e-4 and float(dla.attn_bias.abs().min()) > 1e-3


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


def test_logit_lens_reads_each_row_through_the_final_rmsnorm(
    tiny_llama: mechlab.LoadedModel, tokens: torch.Tensor
) -> None:
    model = tiny_llama.model
    lens = logit_lens(model, tokens[0], pos=6)
    site = mechlab.Site("resid_pre", 1)
    with torch.no_grad():
        logits = model(tokens[:1])[0, 6]
        _, cache = model.run_with_cache(tokens[:1], names_filter=[site.hook_name])
        x = cache[site.hook_name][0, 6]
        rms = (x.pow(2).mean() + model.cfg.eps).sqrt()
        expected = (x / rms * model.ln_final.weight) @ model.W_U
    assert model.cfg.normalization_type == "RMS"
    torch.testing.assert_close(lens.logits[1], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lens.logits[-1], logits, atol=1e-5, rtol=1e-5)
    assert (lens.logits[1] - lens.logits[-1]).abs().max() > 0.1  # the rows differ: a real check


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
    with pytest.raises(mechlab.InputError, match="reads position 40, but the prompt has 12 tokens"):
        logit_lens(tiny.model, tokens[0], pos=40)
    with pytest.raises(mechlab.InputError, match=r"logit\('#5'\) @ -13 reads position -13"):
        direct_logit_attribution(tiny.model, tokens[0], 5, pos=-13)
