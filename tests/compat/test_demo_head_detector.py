"""TransformerLens v2.18.0 ``demos/Head_Detector_Demo.ipynb``, ported to SmolLM2 through
``mechlab.compat``.

Cell 15 of the notebook is a copy of ``transformer_lens.head_detector``; the port imports that module
(``mechlab.compat.head_detector``, TransformerLens 4's) instead. Each test names the notebook cells
it runs. Changed from the notebook, and only this: the import lines, the model, sizes cut for 2 CPU
cores (``# size:``), plots turned into assertions. Not ported: the pysvelte attention plots (cells
25-26, 30-31, 46-47) and cell 49 (the same detection repeated 100 times to average).
"""

from collections.abc import Iterator

import pytest
import torch

from mechlab.compat import ActivationCache, HookedTransformer
from mechlab.compat.head_detector import detect_head

pytestmark = pytest.mark.smollm2

PROMPT = "The head detector feature for TransformerLens allows users to check for various common heads automatically, reducing the cost of discovery."  # noqa: E501


@pytest.fixture(autouse=True)
def no_grad() -> Iterator[None]:
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(previous)


@pytest.fixture
def model(ht_smollm2: HookedTransformer) -> HookedTransformer:
    """Cell 18: ``HookedTransformer.from_pretrained("gpt2-small", device=device)``, here SmolLM2."""
    return ht_smollm2


def test_cells_22_to_28_previous_token_heads(model: HookedTransformer) -> None:
    head_scores = detect_head(model, PROMPT, "previous_token_head")
    assert head_scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert float(head_scores.max()) > 0.5
    _, cache = model.run_with_cache(PROMPT)
    assert isinstance(cache, ActivationCache)
    strict = detect_head(model, PROMPT, "previous_token_head", exclude_bos=True, exclude_current_token=True)
    # Excluding attention to the first and the current token leaves previous-token heads higher.
    top = divmod(int(head_scores.argmax()), model.cfg.n_heads)
    assert float(strict[top]) >= float(head_scores[top]) - 1e-6


def test_cells_39_to_44_a_custom_current_word_pattern(model: HookedTransformer) -> None:
    prompt = "The following lexical sequence has been optimised for the maximisation of loquaciously multitoken letter combinations."  # noqa: E501
    tokens = model.to_str_tokens(prompt)
    detection_pattern = []
    for i in range(2):  # noqa: B007
        detection_pattern.append([0 for t in tokens])
    for i in range(2, len(tokens)):
        current_token = i
        previous_tokens_in_word = 0
        while not tokens[current_token].startswith(" "):
            previous_tokens_in_word += 1
            current_token -= 1
        detection_pattern.append(
            [0 for j in range(i - previous_tokens_in_word)]
            + [1 for j in range(previous_tokens_in_word)]
            + [0 for j in range(i + 1, len(tokens) + 1)]
        )
    detection_pattern = torch.as_tensor(detection_pattern)
    assert detection_pattern.shape == (len(tokens), len(tokens))
    mul = detect_head(
        model,
        prompt,
        detection_pattern=detection_pattern,
        exclude_bos=False,
        exclude_current_token=True,
        error_measure="mul",
    )
    abs_ = detect_head(
        model,
        prompt,
        detection_pattern=detection_pattern,
        exclude_bos=False,
        exclude_current_token=True,
        error_measure="abs",
    )
    assert bool(((mul >= 0) & (mul <= 1)).all())
    assert bool((abs_ <= 1).all())


def test_cells_51_to_61_heads_across_prompts(model: HookedTransformer) -> None:
    prompts = [
        "This is the first the test prompt.",
        "This is another test prompt, being just a sequence of tokens.",
    ]  # size: 2 of 3 prompts
    head_scores = detect_head(model, prompts, "previous_token_head", error_measure="abs")
    assert head_scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    prompts = [
        "one two three one two three one two three",
        "green ideas sleep furiously; green ideas don't sleep furiously",
    ]  # size: 2 of 3 prompts
    duplicate = detect_head(
        model,
        prompts,
        "duplicate_token_head",
        exclude_bos=False,
        exclude_current_token=False,
        error_measure="abs",
    )
    induction = detect_head(
        model, prompts, "induction_head", exclude_bos=False, exclude_current_token=False, error_measure="abs"
    )
    assert duplicate.shape == induction.shape == (model.cfg.n_layers, model.cfg.n_heads)
    # SmolLM2's induction heads (mechlab's detectors: 18.6, 18.7, 23.7) lead the induction ranking.
    top = {divmod(int(i), model.cfg.n_heads) for i in induction.flatten().topk(5).indices}
    assert top & {(18, 6), (18, 7), (23, 7)}


def test_cells_65_to_68_the_all_ones_pattern(model: HookedTransformer) -> None:
    seq_len = len(model.to_str_tokens(PROMPT))
    ones_detection_pattern = torch.tril(torch.ones(seq_len, seq_len))
    ones_head_scores = detect_head(
        model, PROMPT, ones_detection_pattern, exclude_bos=True, exclude_current_token=True
    )
    # "Transformers Have Now Been Solved": with "mul" every head matches the all-ones pattern.
    torch.testing.assert_close(ones_head_scores, torch.ones_like(ones_head_scores), atol=1e-5, rtol=0)
    ones_head_scores = detect_head(
        model,
        PROMPT,
        ones_detection_pattern,
        exclude_bos=True,
        exclude_current_token=True,
        error_measure="abs",
    )
    assert float(ones_head_scores.max()) < 0.99
