"""Probes: accuracy on a planted concept, chance on a control the model cannot know, datasets."""

import json
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.interventions.steering import steer
from mechlab.metrics import LogitDiff
from mechlab.probes.data import ProbeDataset, load_probe_dataset
from mechlab.probes.probes import ProbeConfig, collect_activations, control_labels, fit_probes, train_probes


def test_planted_direction_is_found_and_memorising_word_types_is_not_possible() -> None:
    generator = torch.Generator().manual_seed(0)
    n, d = 400, 24
    labels = torch.randint(0, 2, (n,), generator=generator)
    direction = torch.randn(d, generator=generator)
    features = torch.randn(2, n, d, generator=generator)
    features[1] += 1.5 * (2 * labels[:, None] - 1) * direction / direction.norm()
    keys = tuple(f"w{i % 150}" for i in range(n))  # 150 word types, not encoded in the features
    result = fit_probes(features, tuple("ab"[int(y)] for y in labels), keys, config=ProbeConfig(seed=1))
    assert result.accuracy[1] > 0.9 and abs(float(result.accuracy[0]) - 0.5) < 0.12
    assert abs(float(result.control_accuracy[1]) - 0.5) < 0.12
    assert float(result.selectivity[1]) > 0.3
    assert abs(float(torch.nn.functional.cosine_similarity(result.direction(1), direction, dim=0))) > 0.8
    assert result.predict(features[1, :5], 1) == ["ab"[int(y)] for y in labels[:5]]


def test_toy_model_concept_versus_a_control_it_cannot_see() -> None:
    """A concept planted in a toy's embeddings (tokens below 25 get +3 along a fixed direction) is
    read at the last position; the control's word type is the *next* token, which a causal model
    has not seen, so the control probe is at chance."""
    model = mechlab.load_model("toy:tiny,seed=5").model
    planted = torch.randn(32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        embedding = next(p for p in model.parameters() if p.shape == (50, 32))
        embedding[:25] += 3 * planted / planted.norm()
    sequences = torch.randint(0, 50, (320, 7), generator=torch.Generator().manual_seed(2))
    probed, following = sequences[:, 5], sequences[:, 6]
    labels = tuple("low" if int(t) < 25 else "high" for t in probed)
    sites = [mechlab.Site("resid_post", 0), mechlab.Site("resid_post", 1)]
    features = collect_activations(model, [s[:6] for s in sequences], sites, position="last")
    result = fit_probes(features, labels, tuple(str(int(t)) for t in following), describe={"layers": (0, 1)})
    assert float(result.accuracy.min()) > 0.95
    assert float(result.control_accuracy.max()) < 0.65
    assert float(result.selectivity.min()) > 0.3
    assert result.majority < 0.6


def test_control_labels_are_per_word_type_and_seeded() -> None:
    labels = torch.tensor([0, 1] * 50)
    keys = tuple(f"w{i % 10}" for i in range(100))
    control = control_labels(keys, labels, 2, seed=0)
    for i in range(10):
        assert control[i::10].unique().numel() == 1
    assert torch.equal(control, control_labels(keys, labels, 2, seed=0))
    others = [control_labels(keys, labels, 2, seed=s) for s in range(1, 6)]
    assert any(not torch.equal(control, other) for other in others)


def test_mean_pooling_skips_the_first_token(tiny: mechlab.LoadedModel) -> None:
    seqs = [torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6])]
    site = mechlab.Site("resid_post", 1)
    pooled = collect_activations(tiny.model, seqs, [site], position="mean")
    with torch.no_grad():
        _, cache = tiny.model.run_with_cache(seqs[0][None], names_filter=[site.hook_name])
    torch.testing.assert_close(pooled[0, 0], cache[site.hook_name][0, 1:].mean(0))


def test_bundled_datasets_and_files(tmp_path: Path) -> None:
    for name, classes in (("sentiment", ("negative", "positive")), ("number", ("plural", "singular"))):
        data = load_probe_dataset(name)
        assert len(data) == 720 and data.classes == classes and data.words is not None
    (tmp_path / "d.csv").write_text('text,label\n"Hi, there",a\nBye,b\n')
    assert load_probe_dataset(tmp_path / "d.csv").texts == ("Hi, there", "Bye")
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"text": "x y", "label": 1, "word": "y"})
        + "\n"
        + json.dumps({"text": "z", "label": 0, "word": "z"})
    )
    assert load_probe_dataset(tmp_path / "d.jsonl").words == ("y", "z")
    (tmp_path / "bad.csv").write_text("sentence,label\nx,a\n")
    with pytest.raises(mechlab.InputError, match=r"lacks the column\(s\) \['text'\]"):
        load_probe_dataset(tmp_path / "bad.csv")
    with pytest.raises(mechlab.InputError, match="shipped dataset"):
        load_probe_dataset(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="at least two classes"):
        ProbeDataset.from_lists(["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match="must occur"):
        ProbeDataset.from_lists(["a", "b"], ["x", "y"], words=["a", "q"])


def test_steering_moves_the_target_along_the_direction(
    tiny: mechlab.LoadedModel, tokens: torch.Tensor
) -> None:
    model = tiny.model
    target = LogitDiff(3, 4)
    direction = model.W_U[:, 3] - model.W_U[:, 4]
    site = mechlab.Site("resid_post", 1)
    before = tokens.clone()
    result = steer(model, tokens[0], site, direction.detach(), target, scales=(-2.0, 0.0, 2.0))
    assert torch.equal(tokens, before)
    assert result.values[0] < result.values[1] < result.values[2]
    assert abs(float(result.values[1]) - result.clean) < 1e-5
    assert result.ablated != pytest.approx(result.clean)
    with pytest.raises(mechlab.InputError, match=r"not one\. Use a whole site"):
        steer(model, tokens[0], mechlab.Site("z", 0), torch.ones(8), target)
    with pytest.raises(mechlab.InputError, match="not one"):
        steer(model, tokens[0], mechlab.Site("resid_post", 1, pos=3), direction.detach(), target)


def test_probe_inputs_that_cannot_work_are_refused(tiny: mechlab.LoadedModel) -> None:
    data = ProbeDataset.from_lists(["a b", "c d", "e f", "g h"], ["x", "y", "x", "y"])
    with pytest.raises(mechlab.InputError, match="No layers to probe"):
        train_probes(tiny.model, data, layers=[])
    with pytest.raises(
        mechlab.InputError, match=r"no tokenizer \(toy models take token ids\): it cannot read text"
    ):
        train_probes(tiny.model, data, layers=[0])
    features = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(mechlab.InputError, match="leave 1 for training"):
        fit_probes(features, data.labels, data.labels, config=ProbeConfig(test_fraction=0.75))


def test_probe_cli_rejects_bad_numbers_with_a_usage_message(capsys: pytest.CaptureFixture[str]) -> None:
    from mechlab.cli import main

    with pytest.raises(SystemExit):
        main(["probe", "toy:tiny", "sentiment", "--layers", "1,a"])
    assert "expected comma-separated integers such as 0,12,-1; got '1,a'" in capsys.readouterr().err
    assert main(["probe", "toy:tiny", "sentiment", "--test-fraction", "2"]) == 2
    assert "test_fraction must lie strictly between 0 and 1" in capsys.readouterr().err


def test_probe_data_that_is_not_utf8_is_an_input_error(tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"text,label\ncaf\xe9,1\n")
    with pytest.raises(mechlab.InputError, match=r"is not UTF-8 text \(byte 14"):
        mechlab.load_probe_dataset(path)
