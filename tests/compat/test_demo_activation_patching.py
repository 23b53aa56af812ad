"""TransformerLens v2.18.0 ``demos/Activation_Patching_in_TL_Demo.ipynb``, ported through
``mechlab.compat``: the IOI part on SmolLM2, the induction part on mechlab's trained attention-only
toy (the notebook's ``attn-only-2l`` is a TransformerLens model-zoo model).

Each test names the notebook cells it runs. Changed from the notebook, and only this: the import
lines, the models, constants the model dictates (``# model:``), sizes cut for 2 CPU cores
(``# size:``: ``index_df`` limits a sweep to some of its patches), plots turned into assertions. Not
run on SmolLM2: cells 26, 28, 30 and 31 (the every-layer, every-position and every-head sweeps, 1,350
to 20,000 forward passes); the same ``*_every`` functions run on the toy (cells 39-42).
"""

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from mechlab.compat import HookedTransformer, patching
from mechlab.tokens import TOY_BOS

PROMPTS = [
    "When John and Mary went to the shops, John gave the bag to",
    "When John and Mary went to the shops, Mary gave the bag to",
    "When Tom and James went to the park, James gave the ball to",
    "When Tom and James went to the park, Tom gave the ball to",
    "When Dan and Sid went to the shops, Sid gave an apple to",
    "When Dan and Sid went to the shops, Dan gave an apple to",
    "After Martin and Amy went to the park, Amy gave a drink to",
    "After Martin and Amy went to the park, Martin gave a drink to",
]
ANSWERS = [
    (" Mary", " John"),
    (" John", " Mary"),
    (" Tom", " James"),
    (" James", " Tom"),
    (" Dan", " Sid"),
    (" Sid", " Dan"),
    (" Martin", " Amy"),
    (" Amy", " Martin"),
]


@pytest.fixture(autouse=True)
def no_grad() -> Iterator[None]:
    """Cell 9: ``torch.set_grad_enabled(False)``, undone after each test."""
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(previous)


@pytest.mark.smollm2
def test_cells_14_to_24_ioi_patching(ht_smollm2: HookedTransformer) -> None:
    model = ht_smollm2
    prompts, answers = PROMPTS[:2], ANSWERS[:2]  # size: 8 prompts
    clean_tokens = model.to_tokens(prompts)
    corrupted_tokens = clean_tokens[[(i + 1 if i % 2 == 0 else i - 1) for i in range(len(clean_tokens))]]
    assert model.to_string(clean_tokens[0]) == prompts[0]
    answer_token_indices = torch.tensor(
        [[model.to_single_token(answers[i][j]) for j in range(2)] for i in range(len(answers))],
        device=model.cfg.device,
    )

    def get_logit_diff(logits, answer_token_indices=answer_token_indices):  # type: ignore[no-untyped-def]
        if len(logits.shape) == 3:
            logits = logits[:, -1, :]
        correct_logits = logits.gather(1, answer_token_indices[:, 0].unsqueeze(1))
        incorrect_logits = logits.gather(1, answer_token_indices[:, 1].unsqueeze(1))
        return (correct_logits - incorrect_logits).mean()

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens)  # noqa: RUF059
    clean_logit_diff = get_logit_diff(clean_logits, answer_token_indices).item()
    corrupted_logit_diff = get_logit_diff(corrupted_logits, answer_token_indices).item()
    assert clean_logit_diff > 2.0 and corrupted_logit_diff < -2.0
    CLEAN_BASELINE = clean_logit_diff
    CORRUPTED_BASELINE = corrupted_logit_diff

    def ioi_metric(logits, answer_token_indices=answer_token_indices):  # type: ignore[no-untyped-def]
        return (get_logit_diff(logits, answer_token_indices) - CORRUPTED_BASELINE) / (
            CLEAN_BASELINE - CORRUPTED_BASELINE
        )

    assert ioi_metric(clean_logits).item() == pytest.approx(1.0, abs=1e-6)
    assert ioi_metric(corrupted_logits).item() == pytest.approx(0.0, abs=1e-6)

    # Cell 22 (size: layer 0 at three positions, of 30 layers x every position).
    swapped = int((clean_tokens[0] != corrupted_tokens[0]).nonzero())
    positions = [swapped - 1, swapped, clean_tokens.shape[1] - 1]
    index_df = pd.DataFrame({"layer": [0, 0, 0], "pos": positions})
    resid_pre_act_patch_results = patching.get_act_patch_resid_pre(
        model, corrupted_tokens, clean_cache, ioi_metric, index_axis_names=None, index_df=index_df
    )
    # The pairs differ only in the second name: patching layer 0's input there is the clean run.
    torch.testing.assert_close(
        resid_pre_act_patch_results.cpu(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-4, rtol=0
    )

    # Cell 24 (size: two heads of the last layer, of 30 x 9), checked against patching by hand.
    last = model.cfg.n_layers - 1
    index_df = pd.DataFrame({"layer": [last] * 2, "head": [0, 8]})
    attn_head_out_all_pos_act_patch_results = patching.get_act_patch_attn_head_out_all_pos(
        model, corrupted_tokens, clean_cache, ioi_metric, index_axis_names=None, index_df=index_df
    )

    def patch_head(z, hook, head):  # type: ignore[no-untyped-def]
        z[:, :, head] = clean_cache[hook.name][:, :, head]
        return z

    by_hand = [
        ioi_metric(
            model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(f"blocks.{last}.attn.hook_z", lambda z, hook, h=h: patch_head(z, hook, h))],
            )
        ).item()
        for h in (0, 8)
    ]
    torch.testing.assert_close(
        attn_head_out_all_pos_act_patch_results.cpu(), torch.tensor(by_hand), atol=1e-5, rtol=0
    )


def _induction(induction_toy_dir: Path, seq_len: int) -> tuple:  # type: ignore[type-arg]
    """Cells 34-37 on the toy: clean and corrupted induction batches, their caches and the metric."""
    # model: mechlab's trained 2-layer attention-only toy for the model zoo's attn-only-2l.
    attn_only = HookedTransformer.from_pretrained(f"toy:{induction_toy_dir}")
    d_vocab = attn_only.cfg.d_vocab
    batch = 4
    torch.manual_seed(0)
    rand_tokens_A = torch.randint(1, d_vocab, (batch, seq_len))  # model: vocabulary of 64 (was 100-10000)
    rand_tokens_B = torch.randint(1, d_vocab, (batch, seq_len))
    rand_tokens_C = torch.randint(1, d_vocab, (batch, seq_len))
    bos = torch.tensor([TOY_BOS] * batch)[:, None]  # model: no tokenizer; TOY_BOS for bos_token_id
    clean_tokens_induction = torch.cat([bos, rand_tokens_A, rand_tokens_A], dim=1)
    corrupted_tokens_induction = torch.cat([bos, rand_tokens_A, rand_tokens_B], dim=1)
    clean_logits_induction, clean_cache_induction = attn_only.run_with_cache(clean_tokens_induction)
    corrupted_logits_induction, corrupted_cache_induction = attn_only.run_with_cache(  # noqa: RUF059
        corrupted_tokens_induction
    )

    def induction_loss(logits, answer_token_indices=rand_tokens_A):  # type: ignore[no-untyped-def]
        seq_len = answer_token_indices.shape[1]
        final_logits = logits[:, -seq_len:-1]
        final_log_probs = final_logits.log_softmax(-1)
        return final_log_probs.gather(-1, answer_token_indices[:, 1:].unsqueeze(-1)).mean()

    CLEAN_BASELINE_INDUCTION = induction_loss(clean_logits_induction).item()
    CORRUPTED_BASELINE_INDUCTION = induction_loss(corrupted_logits_induction).item()
    assert CLEAN_BASELINE_INDUCTION > -0.5 and CORRUPTED_BASELINE_INDUCTION < -2.0
    tokens = (bos, rand_tokens_A, rand_tokens_B, rand_tokens_C, corrupted_tokens_induction)
    return (
        attn_only,
        tokens,
        clean_cache_induction,
        induction_loss,
        CLEAN_BASELINE_INDUCTION,
        CORRUPTED_BASELINE_INDUCTION,
    )


@pytest.mark.toy
def test_cells_34_to_42_induction_patching_on_a_trained_toy(induction_toy_dir: Path) -> None:
    attn_only, tokens, clean_cache_induction, induction_loss, clean, corrupted_baseline = _induction(
        induction_toy_dir, seq_len=20
    )
    bos, rand_tokens_A, rand_tokens_B, rand_tokens_C, corrupted_tokens_induction = tokens
    every_head_all_pos_act_patch_result = patching.get_act_patch_attn_head_all_pos_every(
        attn_only, corrupted_tokens_induction, clean_cache_induction, induction_loss
    )
    assert every_head_all_pos_act_patch_result.shape == (5, 2, attn_only.cfg.n_heads)
    output = every_head_all_pos_act_patch_result[0]
    # Patching the induction head's output restores most of the clean loss; no layer-0 head does.
    assert float(output[1].max()) > corrupted_baseline + 0.5 * (clean - corrupted_baseline)
    assert float(output[0].max()) < float(output[1].max())

    # Cells 41-42: corrupting the first half instead (BA, BB, BC).
    for second in (rand_tokens_A, rand_tokens_B, rand_tokens_C):
        corrupted = torch.cat([bos, rand_tokens_B, second], dim=1)
        result = patching.get_act_patch_attn_head_all_pos_every(
            attn_only, corrupted, clean_cache_induction, induction_loss
        )
        assert result.shape == (5, 2, attn_only.cfg.n_heads) and bool(torch.isfinite(result).all())


@pytest.mark.toy
@pytest.mark.slow
def test_cell_39_by_position_patching_on_a_trained_toy(induction_toy_dir: Path) -> None:
    seq_len = 8  # size: 20
    attn_only, tokens, clean_cache_induction, induction_loss, clean, corrupted_baseline = _induction(  # noqa: RUF059
        induction_toy_dir, seq_len=seq_len
    )
    corrupted_tokens_induction = tokens[-1]
    every_head_act_patch_result = patching.get_act_patch_attn_head_by_pos_every(
        attn_only, corrupted_tokens_induction, clean_cache_induction, induction_loss
    )
    assert every_head_act_patch_result.shape == (5, 2, 2 * seq_len + 1, attn_only.cfg.n_heads)
    # Positions before the corrupted half are the same in both runs: patching them changes nothing.
    early = every_head_act_patch_result[:4, :, : seq_len + 1]
    torch.testing.assert_close(early, torch.full_like(early, corrupted_baseline), atol=1e-5, rtol=0)
