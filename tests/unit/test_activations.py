"""Selective capture, memory estimates, and streaming capture to shards (with resumption)."""

import json

import pytest
import torch

import mechlab
from mechlab import (
    CaptureStoreError,
    InputError,
    MemoryLimitError,
    Site,
    SiteError,
    capture,
    capture_dataset,
    estimate_memory,
    hooked,
)
from mechlab import shards as shards_module


def test_capture_keeps_exactly_the_requested_slices(tiny, tokens) -> None:
    model = tiny.model
    sites = [Site("z", 1, head=2), Site("resid_pre", 0, pos=-1), Site("pattern", 0, head=1, pos=3), "mlp_out"]
    acts = capture(model, tokens, sites)
    logits, cache = model.run_with_cache(tokens)
    assert len(acts) == 5  # "mlp_out" expands to both layers
    torch.testing.assert_close(acts[Site("z", 1, head=2)], cache["blocks.1.attn.hook_z"][:, :, 2])
    torch.testing.assert_close(acts["resid_pre.0@-1"], cache["blocks.0.hook_resid_pre"][:, -1])
    torch.testing.assert_close(acts[Site("pattern", 0, 1, 3)], cache["blocks.0.attn.hook_pattern"][:, 1, 3])
    torch.testing.assert_close(acts[Site("mlp_out", 1)], cache["blocks.1.hook_mlp_out"])
    torch.testing.assert_close(acts.logits, logits)
    assert set(acts.to_cache(model).keys()) == {"blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"}
    with pytest.raises(KeyError, match="was not captured"):
        acts[Site("z", 0)]


def test_memory_estimate_is_exact_and_refusal_teaches(tiny_gqa, tokens) -> None:
    model = tiny_gqa.model
    sites = [Site("k", 0), Site("z", 1, 3), Site("pattern", 1), Site("mlp_post", 0, pos=2)]
    estimate = estimate_memory(model, tokens, sites)
    assert estimate.total == capture(model, tokens, sites).nbytes
    assert estimate.per_site[Site("k", 0)] == 2 * 12 * 2 * 8 * 4  # batch·pos·kv_heads·d_head·fp32
    assert estimate.logits == 2 * 12 * 50 * 4  # batch·pos·d_vocab·fp32
    without = estimate_memory(model, tokens, sites, logits=False)
    assert (
        without.total
        == estimate.total - estimate.logits
        == capture(model, tokens, sites, logits=False).nbytes
    )
    with pytest.raises(
        MemoryLimitError, match=r"(?s)needs about .* above the limit of 100 B.*max_bytes=None"
    ):
        capture(model, tokens, sites, max_bytes=100)
    assert len(capture(model, tokens, sites, max_bytes=None)) == 4


def test_bad_sites_are_refused_before_running(tiny, tokens) -> None:
    with pytest.raises(SiteError, match="position 40"):
        capture(tiny.model, tokens, [Site("resid_pre", 0, pos=40)])
    with pytest.raises(SiteError, match="Unknown site kind"):
        capture(tiny.model, tokens, ["nonsense.1"])
    assert mechlab.active_hook_count(tiny.model) == 0


def test_lookups_resolve_negative_indices_and_membership_never_raises(tiny, tokens) -> None:
    acts = capture(tiny.model, tokens, ["resid_pre", Site("z", -1, 2, pos=-1)])
    assert list(acts) == [Site("resid_pre", 0), Site("resid_pre", 1), Site("z", 1, 2, pos=11)]
    assert torch.equal(acts["resid_pre.-1"], acts[Site("resid_pre", 1)])
    assert torch.equal(acts["z.-1.2@-1"], acts["z.1.2@11"])
    assert Site("z", 1, 2, pos=-1) in acts and "resid_pre.0" in acts
    assert "resid_pre" not in acts and "z.1.2" not in acts and 3 not in acts


def _inputs(n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [
        torch.randint(0, 50, (int(torch.randint(4, 10, (1,), generator=generator)),), generator=generator)
        for _ in range(n)
    ]


SITES = [Site("resid_post", 0), Site("z", 1, 0)]


def test_capture_dataset_matches_per_prompt_capture(tiny, tmp_path) -> None:
    inputs = _inputs(7)
    dataset = capture_dataset(tiny.model, iter(inputs), SITES, tmp_path, batch_size=3)
    assert dataset.complete and len(dataset) == 7 and len(dataset.manifest["shards"]) == 3
    stacked = dataset.stack("resid_post.0")
    assert stacked.shape == (7, max(len(x) for x in inputs), 32)
    for i, row in enumerate(inputs):
        alone = capture(tiny.model, row.unsqueeze(0), SITES)
        torch.testing.assert_close(stacked[i, : len(row)], alone[SITES[0]][0], atol=1e-5, rtol=0)
    reopened = mechlab.read_capture(tmp_path)
    assert reopened.sites == ["resid_post.0", "z.1.0"] and reopened.manifest == dataset.manifest


def test_positions_are_read_per_prompt_in_a_padded_batch(tiny, tmp_path) -> None:
    inputs = _inputs(7)
    sites = [Site("resid_post", 1, pos=-1), Site("z", 1, 2, pos=2), Site("pattern", 0, 1, pos=-1)]
    dataset = capture_dataset(tiny.model, inputs, sites, tmp_path, batch_size=3)
    longest = max(len(x) for x in inputs)
    stacked = {site: dataset.stack(str(site)) for site in sites}
    assert stacked[sites[0]].shape == (7, 32) and stacked[sites[2]].shape == (7, longest)
    for i, row in enumerate(inputs):
        alone = capture(tiny.model, row.unsqueeze(0), sites)
        for site in sites[:2]:
            torch.testing.assert_close(stacked[site][i], alone[site][0], atol=1e-5, rtol=0)
        pattern = stacked[sites[2]][i]  # attention from the prompt's own last token, keys padded
        torch.testing.assert_close(pattern[: len(row)], alone[sites[2]][0], atol=1e-6, rtol=0)
        assert not pattern[len(row) :].any()
    too_far = [Site("resid_pre", 0, pos=6)]
    with pytest.raises(InputError, match=r"(?s)prompt \d of batch \d, \d tokens\) names position 6"):
        capture_dataset(tiny.model, inputs, too_far, tmp_path / "far", batch_size=3)


def test_stacking_patterns_pads_query_and_key_positions(tiny, tmp_path) -> None:
    inputs = [torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([7, 8, 9])]
    dataset = capture_dataset(tiny.model, inputs, ["pattern.0", "pattern.1.3"], tmp_path, batch_size=1)
    whole, head = dataset.stack("pattern.0"), dataset.stack("pattern.1.3")
    assert whole.shape == (2, 4, 6, 6) and head.shape == (2, 6, 6)
    alone = capture(tiny.model, inputs[1].unsqueeze(0), ["pattern.0", "pattern.1.3"])
    torch.testing.assert_close(whole[1, :, :3, :3], alone["pattern.0"][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(head[1, :3, :3], alone["pattern.1.3"][0], atol=1e-6, rtol=0)
    assert whole[1, :, 3:].abs().sum() == 0 and whole[1, :, :, 3:].abs().sum() == 0
    assert torch.equal(dataset.stack("lengths"), torch.tensor([6, 3]))


def _shard_indices(directory) -> list[int]:  # type: ignore[no-untyped-def]
    return [s["index"] for s in json.loads((directory / "manifest.json").read_text())["shards"]]


def test_interrupted_capture_resumes_without_duplicates(tiny, tmp_path) -> None:
    inputs = _inputs(10)
    reference = capture_dataset(tiny.model, inputs, SITES, tmp_path / "ref", batch_size=2)

    class Interrupt(Exception):
        pass

    def stop_after_two(state: mechlab.CaptureProgress) -> None:
        if state.batches == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        capture_dataset(tiny.model, inputs, SITES, tmp_path / "run", batch_size=2, progress=stop_after_two)
    assert _shard_indices(tmp_path / "run") == [0, 1]
    seen: list[mechlab.CaptureProgress] = []
    resumed = capture_dataset(tiny.model, inputs, SITES, tmp_path / "run", batch_size=2, progress=seen.append)
    assert [s.batches for s in seen] == [3, 4, 5] and seen[0].resumed_batches == 2
    assert _shard_indices(tmp_path / "run") == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        p.name for p in (tmp_path / "ref").iterdir()
    )
    for site in ("resid_post.0", "z.1.0", "tokens", "lengths"):
        assert torch.equal(resumed.stack(site), reference.stack(site))


def test_crash_between_shard_and_manifest_rewrites_the_orphan(tiny, tmp_path, monkeypatch) -> None:
    inputs = _inputs(6)
    real_save = shards_module._save
    calls = {"n": 0}

    def crash_on_second(directory, manifest) -> None:  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_save(directory, manifest)

    monkeypatch.setattr(shards_module, "_save", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        capture_dataset(tiny.model, inputs, SITES, tmp_path, batch_size=2)
    assert _shard_indices(tmp_path) == [0] and (tmp_path / "shard-000001.safetensors").exists()
    monkeypatch.setattr(shards_module, "_save", real_save)
    dataset = capture_dataset(tiny.model, inputs, SITES, tmp_path, batch_size=2)
    assert _shard_indices(tmp_path) == [0, 1, 2] and len(dataset) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_resume_refuses_a_different_run(tiny, tmp_path) -> None:
    inputs = _inputs(4)
    capture_dataset(tiny.model, inputs, SITES, tmp_path, batch_size=2)
    with pytest.raises(CaptureStoreError, match=r"(?s)sites was .*To resume"):
        capture_dataset(tiny.model, inputs, [Site("resid_post", 1)], tmp_path, batch_size=2)
    with pytest.raises(CaptureStoreError, match="batch 0 has different tokens"):
        capture_dataset(tiny.model, list(reversed(inputs)), SITES, tmp_path, batch_size=2)
    with pytest.raises(CaptureStoreError, match="it holds 2 batches but these inputs make only 1"):
        capture_dataset(tiny.model, inputs[:2], SITES, tmp_path, batch_size=2)
    assert len(mechlab.read_capture(tmp_path)) == 4  # the store is left as it was
    with pytest.raises(CaptureStoreError, match=r"no manifest\.json"):
        mechlab.read_capture(tmp_path / "missing")


def test_capture_dataset_streams_its_inputs(tiny, tmp_path) -> None:
    """Inputs are drawn one batch at a time and each batch is on disk before the next is read."""
    items, drawn, on_disk = _inputs(7), [], []

    def lazily():  # a generator: capture_dataset cannot know or read ahead of the dataset's size
        for n, item in enumerate(items, start=1):
            drawn.append(n)
            yield item

    def progress(state: mechlab.CaptureProgress) -> None:
        on_disk.append((len(drawn), len(list(tmp_path.glob("*.safetensors")))))

    dataset = capture_dataset(tiny.model, lazily(), SITES, tmp_path, batch_size=2, progress=progress)
    assert on_disk == [(2, 1), (4, 2), (6, 3), (7, 4)]
    assert len(dataset) == 7 and dataset.manifest["complete"]


def test_without_logits_the_blocks_after_the_deepest_site_do_not_run(tiny, tokens) -> None:
    calls: list[str] = []
    with hooked(tiny.model, {Site("attn_out", 1): lambda act, site: calls.append(str(site))}):
        early = capture(tiny.model, tokens, "resid_post.0", logits=False)
        assert calls == []
        full = capture(tiny.model, tokens, "resid_post.0")
        assert calls == ["attn_out.1"]
    assert early.logits is None
    assert torch.equal(early["resid_post.0"], full["resid_post.0"])
