"""Every public explanation call leaves its inputs and the model bit-identical, with no hook left
attached and no gradient accumulated on a parameter."""

import torch

import mechlab
from mechlab import ProbeDataset
from mechlab.metrics import LogitDiff
from mechlab.probes.probes import collect_activations, fit_probes


def test_explain_calls_do_not_mutate_anything(tiny, tmp_path) -> None:
    model = tiny.model
    tokens = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(6))
    baseline = torch.randn(8, 32, generator=torch.Generator().manual_seed(7))
    direction = torch.randn(32, generator=torch.Generator().manual_seed(8))
    features = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(9))
    labels = tuple("ab"[i % 2] for i in range(40))
    keys = tuple(str(i % 7) for i in range(40))
    metric = LogitDiff(1, 2)
    inputs = [tokens, baseline, direction, features]
    before = [t.clone() for t in inputs]
    params = {k: v.clone() for k, v in model.state_dict().items()}
    probe = fit_probes(features, labels, keys)
    calls = [
        lambda: mechlab.integrated_gradients(model, tokens, metric, baseline=baseline, steps=8),
        lambda: mechlab.layer_integrated_gradients(
            model, tokens, metric, mechlab.Site("z", 1), baseline=0, steps=8
        ),
        lambda: mechlab.gradient_x_input(model, tokens, metric, baseline=0),
        lambda: mechlab.occlusion(model, tokens, metric, replacement=0),
        lambda: mechlab.direct_logit_attribution(model, tokens, 1, contrast=2),
        lambda: mechlab.logit_lens(model, tokens),
        lambda: mechlab.attention_view(model, tokens, layers=[0]),
        lambda: mechlab.steer(model, tokens, mechlab.Site("resid_post", 0), direction, metric),
        lambda: fit_probes(features, labels, keys),
        lambda: collect_activations(model, [tokens[0]], [mechlab.Site("resid_post", 1)], position="mean"),
        lambda: ProbeDataset.from_lists(["a b", "c d"], ["x", "y"]),
        lambda: probe.page().render(),
    ]
    for call in calls:
        result = call()
        assert all(torch.equal(t, b) for t, b in zip(inputs, before, strict=True))
        assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
        assert mechlab.active_hook_count(model) == 0
        assert all(p.grad is None for p in model.parameters())
        if hasattr(result, "page"):
            result.page().render(prefix="purity")
