"""Every public capture/patching call leaves its inputs, caches and the model bit-identical."""

import torch

import mechlab
from mechlab import Ablation, KLFromReference, LogitDiff, Site, Sweep


def _snapshot(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def test_public_calls_do_not_mutate_inputs(tiny, tmp_path) -> None:
    model = tiny.model
    generator = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 50, (2, 6), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 1) % 50
    cache = mechlab.capture(model, clean, ["z", "resid_pre", "mlp_out"])
    reference = cache.logits.clone()
    kl = KLFromReference(cache.logits)
    metric = LogitDiff(1, 2)
    before = _snapshot(clean, corrupted, *cache.values(), cache.logits)
    params = {k: v.clone() for k, v in model.state_dict().items()}

    calls = [
        lambda: mechlab.capture(model, clean, [Site("z", 1, 0), Site("resid_pre", 0, pos=1)]),
        lambda: mechlab.patch(model, clean, corrupted, "z", metric),
        lambda: mechlab.patch(
            model, clean, corrupted, Sweep("resid_mid", per_position=True), kl, direction="noise"
        ),
        lambda: mechlab.patch(model, clean, Ablation("mean"), "attn_out", metric, direction="noise"),
        lambda: mechlab.attribution_patch(model, clean, corrupted, "z", metric),
        lambda: mechlab.path_patch(model, clean, corrupted, "z", [Site("v", 1, 1)], metric),
        lambda: mechlab.eap_ig(model, clean, corrupted, metric, steps=2),
        lambda: mechlab.capture_dataset(model, clean, "resid_post", tmp_path / "shards", batch_size=1),
    ]
    for call in calls:
        result = call()
        for value, snapshot in zip([clean, corrupted, *cache.values(), cache.logits], before, strict=True):
            assert torch.equal(value, snapshot)
        assert torch.equal(kl.reference, reference)
        assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
        assert mechlab.active_hook_count(model) == 0
        assert all(p.grad is None for p in model.parameters())
        if isinstance(result, mechlab.PatchResult):
            values = result.values.clone()
            result.top(3), result.to_dict(), result.plot()
            assert torch.equal(result.values, values)
