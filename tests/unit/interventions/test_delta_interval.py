"""A dataset-level patching result: each cell's mean change over prompts with a 95% t-interval."""

import math

import torch

import mechlab


def test_the_interval_is_the_t_interval_of_the_per_prompt_changes(tiny, pair) -> None:
    clean, corrupted = pair
    result = mechlab.patch(tiny.model, clean, corrupted, "resid_pre", mechlab.LogitDiff(3, 11))
    assert result.corrupted is not None
    interval = result.delta_interval()
    assert torch.allclose(interval.mean, result.delta, atol=1e-6)
    changes = result.per_prompt - result.corrupted  # [layer, prompt]: each prompt against its own run
    half = 12.7062 * changes.std(-1, correction=1) / math.sqrt(2)  # t(0.975, 1 df) for two prompts
    assert torch.allclose(interval.high - interval.mean, half, rtol=1e-3)
    assert torch.allclose(interval.mean - interval.low, half, rtol=1e-3)
    assert float(half.min()) > 0  # the two prompts respond differently
    one = mechlab.patch(tiny.model, clean[:1], corrupted[:1], "resid_pre", mechlab.LogitDiff(3, 11))
    assert torch.equal(one.delta_interval().low, one.delta_interval().high)
