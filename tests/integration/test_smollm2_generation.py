"""Generation invariants on SmolLM2: the ones a change in transformers' key/value cache broke (verify's
100% generation agreement is asserted in test_smollm2_load.py)."""

import pytest

import mechlab
from mechlab.models.decoding import decode, stop_ids
from tests.unit.models.test_decoding import argmax_loop

pytestmark = [pytest.mark.smollm2, pytest.mark.drift]

PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "When Mary and John went to the store, John gave a drink to",
    "def fibonacci(n):\n    if n < 2:\n        return",
)


@pytest.mark.parametrize("through_hooks", [True, False], ids=["hooked", "plain-twin"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_cached_greedy_generation_equals_a_full_recompute_argmax_loop(smollm2, prompt, through_hooks) -> None:
    tokens = smollm2.model.to_tokens(prompt)
    out = decode(smollm2.model, tokens, max_new_tokens=20, through_hooks=through_hooks)
    assert out.cached
    assert list(out.token_ids) == argmax_loop(smollm2.model, tokens, 20)


def test_generate_greedy_answers_paris_and_stops_at_end_of_sequence(smollm2) -> None:
    completion = mechlab.generate(smollm2.model, PROMPTS[0], max_new_tokens=12)
    assert completion.text.startswith(" Paris")
    assert completion.steps[-1].token_id in stop_ids(smollm2.model) or len(completion.steps) == 12


def test_generate_with_temperature_and_seed_is_reproducible(smollm2) -> None:
    runs = [
        mechlab.generate(smollm2.model, PROMPTS[1], max_new_tokens=12, temperature=1.0, seed=s).text
        for s in (3, 3)
    ]
    assert runs[0] == runs[1]
    greedy = mechlab.generate(smollm2.model, PROMPTS[1], max_new_tokens=12).text
    other = [
        mechlab.generate(smollm2.model, PROMPTS[1], max_new_tokens=12, temperature=1.0, seed=s).text
        for s in (4, 5)
    ]
    assert len({greedy, runs[0], *other}) > 1  # sampling is not greedy decoding in disguise
