"""Activation patching on tiny seeded models: invariants, TransformerLens equivalence, errors."""

import pytest
import torch
from transformer_lens import patching as tl_patching

import mechlab
from mechlab import Ablation, InputError, LogitDiff, Site, SiteError, Sweep
from mechlab.interventions import runner as runner_module
from mechlab.interventions.inputs import check_direction
from mechlab.interventions.patching import patch


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """This module's own pair (overrides the shared one): ``[2, 8]``, differing at position 5."""
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (2, 8), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 5] = (clean[:, 5] + 7) % 50
    return clean, corrupted


METRIC = LogitDiff(3, 11)


def test_clean_into_clean_is_a_no_op(tiny, pair) -> None:
    clean, _ = pair
    result = patch(tiny.model, clean, clean, "z", METRIC)
    assert torch.allclose(result.values, result.clean.mean().expand_as(result.values), atol=1e-5)
    with pytest.raises(InputError, match="score the same"):
        result.normalized  # noqa: B018


@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "resid_post"])
def test_patching_the_whole_residual_stream_restores_the_clean_run(tiny, pair, kind) -> None:
    clean, corrupted = pair
    for direction in ("denoise", "noise"):
        result = patch(tiny.model, clean, corrupted, kind, METRIC, direction=direction)
        expected = 1.0 if direction == "denoise" else 0.0
        torch.testing.assert_close(result.normalized, torch.full((2,), expected), atol=1e-4, rtol=0)


def test_resid_pre_at_the_differing_position_recovers_clean_exactly(tiny, pair) -> None:
    clean, corrupted = pair
    result = patch(
        tiny.model, clean, corrupted, [Site("resid_pre", 0, pos=5), Site("resid_pre", 0, pos=4)], METRIC
    )
    torch.testing.assert_close(result.per_prompt[0], result.clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.per_prompt[1], result.corrupted, atol=1e-5, rtol=0)


def _tl_metric(tokens_metric):
    return lambda logits: tokens_metric(logits).mean()


@pytest.mark.parametrize(
    ("kind", "tl_fn"),
    [
        ("z", tl_patching.get_act_patch_attn_head_out_all_pos),
        ("q", tl_patching.get_act_patch_attn_head_q_all_pos),
        ("k", tl_patching.get_act_patch_attn_head_k_all_pos),
        ("v", tl_patching.get_act_patch_attn_head_v_all_pos),
        ("pattern", tl_patching.get_act_patch_attn_head_pattern_all_pos),
        ("attn_out", tl_patching.get_act_patch_attn_out),
        ("mlp_out", tl_patching.get_act_patch_mlp_out),
        ("resid_pre", tl_patching.get_act_patch_resid_pre),
    ],
)
@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa"])
def test_matches_transformer_lens_patching(request, pair, kind, tl_fn, fixture) -> None:
    model = request.getfixturevalue(fixture).model
    clean, corrupted = pair
    per_position = kind in ("attn_out", "mlp_out", "resid_pre")
    ours = patch(model, clean, corrupted, Sweep(kind, per_position=per_position), METRIC, batch_size=6)
    _, cache = model.run_with_cache(clean, names_filter=[Site(kind, layer).hook_name for layer in range(2)])
    theirs = tl_fn(model, corrupted, cache, _tl_metric(METRIC))
    torch.testing.assert_close(ours.values, theirs, atol=1e-5, rtol=0)


def test_gqa_key_value_sweeps_have_key_value_heads(tiny_gqa, pair) -> None:
    clean, corrupted = pair
    assert patch(tiny_gqa.model, clean, corrupted, "k", METRIC).shape == (2, 2)
    assert patch(tiny_gqa.model, clean, corrupted, "q", METRIC).shape == (2, 4)


ORDERS = {"prefix": ("prefix", "resume", "full"), "resume": ("resume", "full"), "full": ("full",)}


@pytest.mark.parametrize(("fixture", "fastest"), [("tiny", "resume"), ("tiny_llama", "prefix")])
@pytest.mark.parametrize("kind", ["z", "resid_mid", "embed"])
def test_every_strategy_gives_the_same_numbers(request, pair, monkeypatch, fixture, fastest, kind) -> None:
    model = request.getfixturevalue(fixture).model
    clean, corrupted = pair
    sweep = Sweep(kind, per_position=True)
    results = {}
    for mode, order in ORDERS.items():
        monkeypatch.setattr(runner_module, "STRATEGIES", order)
        results[mode] = patch(model, clean, corrupted, sweep, METRIC, batch_size=6)
    # TransformerLens-native toys keep no key/value cache, so they cannot share the prefix.
    expected = {"prefix": fastest, "resume": "resume", "full": "full"}
    assert {mode: result.mode for mode, result in results.items()} == expected
    assert f"{fastest} runs" in results["prefix"].summary()
    for mode in ("resume", "full"):
        torch.testing.assert_close(results["prefix"].values, results[mode].values, atol=1e-5, rtol=0)
    # Patching at the first differing position (5) moves the metric; positions before it cannot.
    assert results["full"].delta[..., 5].abs().max() > 1e-3
    assert results["full"].delta[..., :5].abs().max() < 1e-5


def test_a_strategy_that_does_not_reproduce_the_logits_is_dropped(tiny, pair, monkeypatch) -> None:
    clean, corrupted = pair
    monkeypatch.setattr(runner_module, "TOLERANCE", -1.0)  # nothing reproduces within it
    result = patch(tiny.model, clean, corrupted, "z", METRIC)
    monkeypatch.setattr(runner_module, "STRATEGIES", ("full",))
    full = patch(tiny.model, clean, corrupted, "z", METRIC)
    assert result.mode == "full"
    torch.testing.assert_close(result.values, full.values, atol=1e-6, rtol=0)


def test_groups_of_sites_are_patched_together(tiny, pair) -> None:
    clean, corrupted = pair
    every_head = [Site("z", 1, h) for h in range(4)]
    together = patch(tiny.model, clean, corrupted, [every_head], METRIC)
    layer = patch(tiny.model, clean, corrupted, [Site("z", 1)], METRIC)
    torch.testing.assert_close(together.values, layer.values, atol=1e-6, rtol=0)


def test_user_callable_metric_scalar_or_per_prompt(tiny, pair) -> None:
    clean, corrupted = pair
    per_prompt = patch(tiny.model, clean, corrupted, "attn_out", lambda logits: METRIC(logits))
    scalar = patch(tiny.model, clean, corrupted, "attn_out", lambda logits: METRIC(logits).mean())
    builtin = patch(tiny.model, clean, corrupted, "attn_out", METRIC)
    torch.testing.assert_close(per_prompt.per_prompt, builtin.per_prompt, atol=1e-5, rtol=0)
    torch.testing.assert_close(scalar.values, builtin.values, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="one number per prompt"):
        patch(tiny.model, clean, corrupted, "attn_out", lambda logits: logits[:, -1])


def test_zero_ablation_of_a_layer_matches_hooks(tiny, pair) -> None:
    clean, _ = pair
    result = patch(tiny.model, clean, Ablation("zero"), [Site("attn_out", 1)], METRIC)
    with mechlab.hooked(tiny.model, {Site("attn_out", 1): lambda act, site: torch.zeros_like(act)}):
        expected = METRIC(tiny.model(clean)).mean()
    assert result.values.item() == pytest.approx(expected.item(), abs=1e-5)
    assert result.corrupted is None and result.direction == "noise"  # implied by the ablation
    torch.testing.assert_close(result.effect, -result.delta)
    with pytest.raises(InputError, match="no corrupted run"):
        result.normalized  # noqa: B018
    with pytest.raises(InputError, match="direction='noise'"):
        patch(tiny.model, clean, Ablation("mean"), "z", METRIC, direction="denoise")
    with pytest.raises(InputError, match=r"direction must be one of .*got 'sideways'"):
        check_direction("sideways", ablation=False)


def test_mean_ablation_of_a_pattern_averages_over_prompts_and_query_positions(tiny, pair) -> None:
    clean, _ = pair
    head = Site("pattern", 1, 2)
    result = patch(tiny.model, clean, Ablation("mean"), [head], METRIC)

    def ablate(act: torch.Tensor, site: Site) -> torch.Tensor:
        out = act.clone()
        out[:, 2] = act[:, 2].mean(dim=(0, 1), keepdim=True)  # [batch, q_pos, k_pos] of head 2
        return out

    with mechlab.hooked(tiny.model, {head.whole: ablate}):
        expected = METRIC(tiny.model(clean))
    torch.testing.assert_close(result.per_prompt[0], expected, atol=1e-5, rtol=0)


def test_length_mismatch_error_shows_tokens(tiny) -> None:
    clean, corrupted = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 9, 9, 4]])
    with pytest.raises(
        InputError, match=r"(?s)same shape.*first differ at position 2.*<- differs.*single token"
    ):
        patch(tiny.model, clean, corrupted, "z", METRIC)


def test_empty_selections_are_errors_not_everything(tiny, pair) -> None:
    for field in ("layers", "heads", "positions"):
        with pytest.raises(ValueError, match=rf"{field}=\(\)\) selects nothing"):
            Sweep("z", per_position=True, **{field: ()})
    with pytest.raises(ValueError, match="'embed' has no layers"):
        Sweep("embed", layers=(0,))
    clean, corrupted = pair
    sweep = Sweep("z", layers=range(1, 2), heads=[0, 3])  # any sequence; stored as a tuple
    assert sweep.layers == (1,) and sweep.heads == (0, 3)
    result = patch(tiny.model, clean, corrupted, sweep, METRIC)
    assert result.shape == (1, 2) and result.labels == (("1",), ("0", "3"))
    with pytest.raises(SiteError, match="position 8"):
        patch(tiny.model, clean, corrupted, Sweep("z", per_position=True, positions=(8,)), METRIC)


def test_bad_sites_are_refused(tiny, pair) -> None:
    clean, corrupted = pair
    with pytest.raises(SiteError, match="Cannot patch ln1_scale"):
        patch(tiny.model, clean, corrupted, [Site("ln1_scale", 0)], METRIC)
    with pytest.raises(SiteError, match="2 layers"):
        patch(tiny.model, clean, corrupted, [Site("z", 5, 0)], METRIC)
    with pytest.raises(SiteError, match="position 9"):
        patch(tiny.model, clean, corrupted, [Site("resid_pre", 0, pos=9)], METRIC)
    with pytest.raises(SiteError, match="Cannot sweep"):
        Sweep("attn_scores")


def test_hooks_are_removed_when_the_metric_raises(tiny, pair) -> None:
    clean, corrupted = pair

    def broken(logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        patch(tiny.model, clean, corrupted, "z", broken)
    assert mechlab.active_hook_count(tiny.model) == 0


def test_hooks_are_removed_after_an_exception_inside_a_hook(tiny, pair) -> None:
    _clean, corrupted = pair
    bad = runner_module.Replacement(Site("z", 1, 0), torch.zeros(3, 3))
    runner = runner_module.Runner(tiny.model, corrupted, positions=[-1], resume_layers=[1])
    with pytest.raises(mechlab.HookError, match=r"z\.1"):
        runner.run([[bad]], 1)
    assert mechlab.active_hook_count(tiny.model) == 0


def test_result_views(tiny, pair) -> None:
    import json

    clean, corrupted = pair
    result = patch(tiny.model, clean, corrupted, Sweep("z", per_position=True), METRIC)
    assert result.shape == (2, 4, 8) and result.axes == ("layer", "head", "pos")
    top = result.top(3)
    assert len(top) == 3 and abs(top[0].effect) >= abs(top[1].effect) >= abs(top[2].effect)
    assert result[top[0].label] == pytest.approx(top[0].value)
    assert result.entry(top[0].sites[0]) == top[0]
    # Negative layers and positions count from the end, as in the sweep's own sites.
    assert result["z.-1.0@-1"] == result[Site("z", 1, 0, pos=7)] == float(result.values[1, 0, 7])
    with pytest.raises(KeyError, match="not a cell"):
        result["z.1.0"]
    frame = result.to_dataframe()
    assert list(frame.columns[:3]) == ["layer", "head", "pos"] and len(frame) == 64
    assert json.loads(json.dumps(result.to_dict()))["shape"] == [2, 4, 8]
    page = result._repr_html_()
    assert "<img" in page and "<table" in page and "data:image/png;base64," in page
    assert result.plot().axes[0].get_title().startswith("activation patching")
    shown = {
        name: torch.tensor(fig.axes[0].images[0].get_array()).float()
        for name, fig in (("effect", result.plot(effect=True)), ("values", result.plot(normalized=False)))
    }
    assert torch.allclose(shown["effect"], result.effect.reshape(8, 8).float(), atol=1e-6)
    assert torch.allclose(shown["values"], result.values.reshape(8, 8).float(), atol=1e-6)
    colorbar = result.plot(effect=True, label="logit(' she') − logit(' he')").axes[-1]
    assert colorbar.get_ylabel() == "logit(' she') − logit(' he')"
    assert result.plot().axes[-1].get_ylabel() == "normalized effect"


def test_results_without_a_normalized_effect_fall_back_to_the_change(tiny, pair) -> None:
    clean, corrupted = pair
    with torch.no_grad():
        floor = float(torch.maximum(METRIC(tiny.model(clean)), METRIC(tiny.model(corrupted))).max())

    def saturating(logits: torch.Tensor) -> torch.Tensor:
        return METRIC(logits).clamp(min=floor)  # clean and corrupted both score `floor`

    for direction in ("denoise", "noise"):
        result = patch(
            tiny.model, clean, corrupted, Sweep("z", per_position=True), saturating, direction=direction
        )
        assert not result.normalizable and result.clean_mean == result.corrupted_mean == pytest.approx(floor)
        assert result.delta.abs().max() > 1e-3  # some patched runs rise above the floor
        sign = 1 if direction == "denoise" else -1
        torch.testing.assert_close(result.effect, sign * result.delta)
        assert [e.label for e in result.top(2)] == [
            result.label(int(i)) for i in result.delta.abs().flatten().argsort(descending=True)[:2]
        ]
        assert "normalized" not in result.records()[0] and "score the same" in result.summary()
        assert "<table" in result._repr_html_()
        with pytest.raises(InputError, match="score the same"):
            result.normalized  # noqa: B018


def test_progress_reports_variants_and_drives_a_rich_bar(tiny, pair) -> None:
    import io

    from rich.console import Console

    clean, corrupted = pair
    seen: list[mechlab.ProgressState] = []
    patch(tiny.model, clean, corrupted, "z", METRIC, batch_size=4, progress=seen.append)
    assert [(s.done, s.total) for s in seen] == [(2, 8), (4, 8), (6, 8), (8, 8)]
    output = io.StringIO()
    with mechlab.RichProgress("Patching", console=Console(file=output, width=80)) as bar:
        patch(tiny.model, clean, corrupted, "z", METRIC, batch_size=4, progress=bar)
        bar(mechlab.CaptureProgress(batches=3, rows=5, total_batches=4, resumed_batches=0))
    assert "Patching" in output.getvalue()


def test_a_metric_returning_nan_is_an_error_naming_the_runs(tiny, pair) -> None:
    clean, corrupted = pair
    with torch.no_grad():
        reference = tiny.model(corrupted)[:, -1, 3]

    def nan_where_changed(logits: torch.Tensor) -> torch.Tensor:
        changed = (logits[:, -1, 3] - reference).abs() > 1e-4
        return torch.where(changed, torch.nan, logits[:, -1, 3])

    with pytest.raises(InputError, match=r"returned NaN for \d+ of the runs") as caught:
        patch(
            tiny.model,
            clean,
            corrupted,
            Sweep("resid_pre", per_position=True, positions=[0, 5]),
            nan_where_changed,
        )
    message = str(caught.value)
    assert "the clean baseline" in message and "corrupted baseline" not in message
    assert "resid_pre.0@5 (prompt 0)" in message  # the clean token at the differing position
    assert "resid_pre.0@0" not in message  # the same token in both runs: unchanged, finite
    with pytest.raises(InputError, match=r"returned NaN .*the clean baseline, the corrupted baseline"):
        mechlab.attribution_patch(
            tiny.model, clean, corrupted, "z", lambda logits: logits[:, -1, 3] * torch.nan
        )


def test_a_target_is_the_metric_it_holds(tiny, pair) -> None:
    """The number an explanation explains (``make_target``) drives patching and AtP as its metric does."""
    from mechlab.interventions.scoring import scorer
    from mechlab.targets import Target

    clean, corrupted = pair
    target = Target(METRIC, "logit diff (3 − 11)", 3, 11, "logit_diff")
    assert scorer(target, 8).vectorized  # the position-narrowed fast path, as for the metric itself
    by_target = patch(tiny.model, clean, corrupted, "z", target)
    by_metric = patch(tiny.model, clean, corrupted, "z", METRIC)
    assert torch.equal(by_target.values, by_metric.values)
    atp_target = mechlab.attribution_patch(tiny.model, clean, corrupted, "z", target)
    atp_metric = mechlab.attribution_patch(tiny.model, clean, corrupted, "z", METRIC)
    assert torch.equal(atp_target.values, atp_metric.values)
