"""mechlab's decoding loop: the key/value cache gives the tokens a full recompute gives, sampling is
reproducible, and a cache that does not reproduce a full forward is detected and bypassed."""

from typing import Any

import pytest
import torch

import mechlab
from mechlab.models import kv_cache, plain
from mechlab.models.decoding import decode

pytestmark = pytest.mark.drift


def argmax_loop(model: Any, tokens: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding by recomputing the whole sequence at every step, written out by hand."""
    ids: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(tokens)[0, -1].argmax()))
            tokens = torch.cat([tokens, torch.tensor([[ids[-1]]])], dim=1)
    return ids


PROMPTS = ([[1, 2, 3, 4, 5]], [[7]], [[3, 9, 27, 31, 12, 40, 2, 2]])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_cached_greedy_decoding_equals_the_full_recompute_loop(tiny_llama, prompt) -> None:
    model, tokens = tiny_llama.model, torch.tensor(prompt)
    out = decode(model, tokens, max_new_tokens=20)
    assert out.cached  # the Llama keeps a cache, and the cache was found to work
    assert list(out.token_ids) == argmax_loop(model, tokens, 20)
    assert len(out.logits) == 20 and out.logits[0].shape == (int(model.cfg.d_vocab),)


def test_the_cache_holds_every_position_it_was_given(tiny_llama) -> None:
    model = tiny_llama.model
    cache = kv_cache.new_cache(model)
    full = model(torch.tensor([[4, 8, 15, 16, 23, 42]]))
    kv_cache.run(model, torch.tensor([[4, 8, 15, 16]]), cache)
    assert kv_cache.cached_length(cache) == 4
    step = kv_cache.run(model, torch.tensor([[23, 42]]), cache)
    assert kv_cache.cached_length(cache) == 6
    torch.testing.assert_close(step, full[:, 4:], atol=1e-5, rtol=1e-5)


def test_a_native_toy_decodes_without_a_cache_and_matches_the_loop(tiny) -> None:
    tokens = torch.tensor([[1, 5, 9, 2]])
    out = decode(tiny.model, tokens, max_new_tokens=12)
    assert not out.cached and kv_cache.new_cache(tiny.model) is None
    assert list(out.token_ids) == argmax_loop(tiny.model, tokens, 12)


def test_decoding_stops_after_a_stop_token_and_includes_it(tiny_llama) -> None:
    tokens = torch.tensor([[1, 2, 3]])
    free = decode(tiny_llama.model, tokens, max_new_tokens=10).token_ids
    stopped = decode(tiny_llama.model, tokens, max_new_tokens=10, stop_ids={free[2]}).token_ids
    first = free.index(free[2])
    assert stopped == free[: first + 1]


def test_sampling_with_a_seed_is_reproducible_and_leaves_the_global_rng_alone(tiny_llama) -> None:
    model, tokens = tiny_llama.model, torch.tensor([[1, 2, 3]])
    state = torch.random.get_rng_state()
    runs = [decode(model, tokens, max_new_tokens=15, temperature=1.5, seed=s).token_ids for s in (7, 7, 8)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # 15 draws at temperature 1.5 from 50 tokens: another seed differs
    assert list(runs[0]) != argmax_loop(model, tokens, 15)


def test_a_cache_that_does_not_reproduce_a_full_forward_is_bypassed_with_a_warning(
    tmp_path, monkeypatch
) -> None:
    from tests.tiny_llama import save_tiny_llama

    model = mechlab.load_model(str(save_tiny_llama(tmp_path, vocab_size=50, initializer_range=0.1))).model
    # A cache that is never read: each step sees its own token only (what transformers 5.24 did to
    # TransformerLens 4.3's attention before ``kv_cache.enable``), on the bridge and on its twin.
    monkeypatch.setattr(kv_cache, "run", lambda model, tokens, cache: model(tokens))
    monkeypatch.setattr(plain, "run", lambda twin, tokens, cache: twin(tokens).logits)
    tokens = torch.tensor([[5, 6, 7, 8]])
    with pytest.warns(RuntimeWarning, match="key/value cache does not reproduce a full forward"):
        out = decode(model, tokens, max_new_tokens=8)
    assert not out.cached and kv_cache.verdict(plain.twin(model)) is False
    assert list(out.token_ids) == argmax_loop(model, tokens, 8)


def test_the_plain_twin_holds_the_models_own_tensors_and_computes_its_logits(tiny_llama) -> None:
    model = tiny_llama.model
    twin = plain.twin(model)
    assert twin is not None and plain.twin(model) is twin  # built once per model
    own = {id(p) for p in model.original_model.parameters()}
    assert all(id(p) in own for p in twin.parameters())  # shared, not copied
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        torch.testing.assert_close(twin(tokens).logits, model(tokens), atol=1e-5, rtol=1e-5)


def test_with_a_hook_attached_every_step_runs_through_the_hook(tiny_llama) -> None:
    model, tokens = tiny_llama.model, torch.tensor([[2, 7, 1, 8]])
    free = decode(model, tokens, max_new_tokens=6).token_ids
    seen: list[int] = []

    def count(resid: torch.Tensor, hook) -> None:  # type: ignore[no-untyped-def]
        seen.append(resid.shape[1])

    with model.hooks(fwd_hooks=[(mechlab.Site("resid_post", 0).hook_name, count)]):
        assert plain.hooks_attached(model)
        hooked = decode(model, tokens, max_new_tokens=6)
    assert not plain.hooks_attached(model)
    assert hooked.token_ids == free and hooked.cached
    # The prompt, five cached single-token steps, and the full forward that checks the first of them.
    assert seen[0] == 4 and seen.count(1) == 5
