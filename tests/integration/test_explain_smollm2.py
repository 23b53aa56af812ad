"""Explanation methods on the real model: the done-when of the attribution CLI, DLA's sum, the
logit lens's last row, probes with control tasks, attention views of a grouped-query model."""

import re

import pytest
import torch

import mechlab
from mechlab import attention_view, direct_logit_attribution, logit_lens, make_target
from mechlab.cli import main
from mechlab.interventions.steering import steer_with_probe
from mechlab.probes.data import load_probe_dataset
from mechlab.probes.probes import train_probes

EIFFEL = "The Eiffel Tower is located in the city of"
IOI = "When Mary and John went to the store, John gave a drink to"


def test_attribute_command_ranks_eiffel_and_reports_completeness(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attribute", "smollm2", EIFFEL, "--target", " Paris"]) == 0
    out = capsys.readouterr().out
    error = float(re.search(r"Completeness error: ([\d.]+)%", out).group(1))
    assert error <= 5.0
    words = re.search(r"Most attributed words: (.*)", out).group(1)
    top_two = re.findall(r"'([^']*)' [+-][\d.]+", words)[:2]
    assert "Eiffel" in top_two and ("Tower" in top_two or "city" in top_two), out


def test_a_multi_token_target_says_how_it_tokenizes(smollm2: mechlab.LoadedModel) -> None:
    with pytest.raises(mechlab.InputError, match=r"splits it into 2 tokens \[' Paris', 'ian'\]") as info:
        make_target(smollm2.model, " Parisian")
    assert "' Paris'  (its first token" in str(info.value)
    with pytest.raises(mechlab.InputError, match="' nurse'  \\(a single token\\)"):
        make_target(smollm2.model, "nurse")  # "nurse" without the space is two tokens


@pytest.mark.parametrize(
    ("prompt", "answer", "contrast"), [(EIFFEL, " Paris", None), (IOI, " Mary", " John")]
)
def test_dla_sums_to_the_models_logit(
    smollm2: mechlab.LoadedModel, prompt: str, answer: str, contrast: str | None
) -> None:
    model = smollm2.model
    dla = direct_logit_attribution(model, prompt, answer, contrast=contrast)
    with torch.no_grad():
        logits = model(model.to_tokens(prompt))[0, -1]
    ids = [model.tokenizer.encode(t, add_special_tokens=False)[0] for t in (answer, contrast) if t]
    expected = logits[ids[0]] - (logits[ids[1]] if len(ids) > 1 else 0)
    assert abs(dla.value - float(expected)) < 1e-4
    assert abs(dla.total - dla.value) < 1e-3
    assert dla.heads.shape == (30, 9)
    if contrast:
        assert dla.top_heads(1, by="value")[0][:2] == (23, 3)  # the head patching also ranks first


def test_logit_lens_ends_at_the_models_logits(smollm2: mechlab.LoadedModel) -> None:
    model = smollm2.model
    lens = logit_lens(model, EIFFEL, targets=(" Paris",))
    with torch.no_grad():
        logits = model(model.to_tokens(EIFFEL))[0, -1]
    torch.testing.assert_close(lens.logits[-1], logits, atol=1e-3, rtol=1e-4)
    ranks = lens.ranks(lens.targets[0])
    assert int(ranks[-1]) == 0 and int(ranks[0]) > 100
    assert 20 <= (lens.first_layer_top(lens.targets[0]) or 0) <= 30


def test_number_probes_are_selective_in_the_middle_layers(smollm2: mechlab.LoadedModel) -> None:
    data = load_probe_dataset("number")
    half = mechlab.probes.data.ProbeDataset(data.texts[:320], data.labels[:320], data.words[:320], "number")
    result = train_probes(smollm2.model, half, "resid_post", [0, 12, 18])
    assert float(result.accuracy[1]) > 0.9 and float(result.accuracy[2]) > 0.9
    assert float(result.selectivity[1:].min()) > 0.2
    assert float(result.selectivity[1:].max()) > float(result.selectivity[0])


def test_steering_along_a_sentiment_probe_moves_the_output(smollm2: mechlab.LoadedModel) -> None:
    model = smollm2.model
    data = load_probe_dataset("sentiment")
    subset = mechlab.probes.data.ProbeDataset(data.texts[::3], data.labels[::3], data.words[::3], "s")
    probe = train_probes(model, subset, "resid_post", [12])
    target = make_target(model, " great", contrast=" terrible")
    result = steer_with_probe(
        model, "I watched the film last night. It was", probe, 12, target, scales=(-4, 0, 4)
    )
    assert probe.classes == ("negative", "positive")
    assert result.values[0] < result.values[1] < result.values[2]
    assert float(result.values[2] - result.values[0]) > 1.0


def test_attention_view_of_a_grouped_query_layer(smollm2: mechlab.LoadedModel) -> None:
    view = attention_view(smollm2.model, EIFFEL, layers=[18])
    assert view.patterns.shape == (9, 10, 10)
    torch.testing.assert_close(view.patterns.sum(-1), torch.ones(9, 10))
    html = view.page().render()
    for remote in ('src="http', "src='http", 'href="http', "@import", "url(http"):
        assert remote not in html
