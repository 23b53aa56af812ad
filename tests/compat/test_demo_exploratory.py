"""TransformerLens v2.18.0 ``demos/Exploratory_Analysis_Demo.ipynb`` (indirect object identification),
ported to SmolLM2 through ``mechlab.compat``.

Each test names the notebook cells it runs. Changed from the notebook, and only this: the import
line, the model (``"smollm2"``), constants the model dictates (``# model:``), sizes cut for 2 CPU
cores (``# size:``), plots and prints turned into assertions. Every name of the demo is one SmolLM2
token, so the prompts are the demo's own.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import einops
import pytest
import torch
from fancy_einsum import einsum
from jaxtyping import Float

import mechlab
from mechlab.compat import ActivationCache, HookedTransformer, utils
from mechlab.errors import CompatError

pytestmark = pytest.mark.smollm2


@pytest.fixture(autouse=True)
def no_grad() -> Iterator[None]:
    """Cell 11: ``torch.set_grad_enabled(False)``, undone after each test."""
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(previous)


@dataclass
class IOI:
    model: HookedTransformer
    prompts: list[str]
    answer_tokens: torch.Tensor
    tokens: torch.Tensor
    original_logits: torch.Tensor
    cache: ActivationCache
    logit_diff_directions: torch.Tensor


def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):  # type: ignore[no-untyped-def]
    """Cell 28."""
    final_logits = logits[:, -1, :]
    answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
    answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
    if per_prompt:
        return answer_logit_diff
    else:
        return answer_logit_diff.mean()


@pytest.fixture(scope="module")
def ioi(ht_smollm2: HookedTransformer) -> IOI:
    """Cells 22-34: the eight IOI prompts, their cache and the logit-difference directions."""
    model = ht_smollm2
    prompt_format = [
        "When John and Mary went to the shops,{} gave the bag to",
        "When Tom and James went to the park,{} gave the ball to",
        "When Dan and Sid went to the shops,{} gave an apple to",
        "After Martin and Amy went to the park,{} gave a drink to",
    ]
    names = [(" Mary", " John"), (" Tom", " James"), (" Dan", " Sid"), (" Martin", " Amy")]
    prompts = []
    answers = []
    answer_tokens = []
    for i in range(len(prompt_format)):
        for j in range(2):
            answers.append((names[i][j], names[i][1 - j]))
            answer_tokens.append(
                (model.to_single_token(answers[-1][0]), model.to_single_token(answers[-1][1]))
            )
            prompts.append(prompt_format[i].format(answers[-1][1]))
    answer_tokens = torch.tensor(answer_tokens).to(model.cfg.device)
    with torch.no_grad():
        tokens = model.to_tokens(prompts, prepend_bos=True)
        original_logits, cache = model.run_with_cache(tokens)
        answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    return IOI(model, prompts, answer_tokens, tokens, original_logits, cache, logit_diff_directions)


def residual_stack_to_logit_diff(
    residual_stack: Float[torch.Tensor, "components batch d_model"], cache: ActivationCache, ioi: IOI
) -> torch.Tensor:
    """Cell 39."""
    scaled_residual_stack = cache.apply_ln_to_stack(residual_stack, layer=-1, pos_slice=-1)
    return einsum(
        "... batch d_model, batch d_model -> ...", scaled_residual_stack, ioi.logit_diff_directions
    ) / len(ioi.prompts)


def test_cell_18_refactoring_needs_absolute_positions() -> None:
    # model: rotary positions; TransformerLens 2.18 refuses this on rotary models too.
    with pytest.raises(CompatError, match="rotary"):
        HookedTransformer.from_pretrained(
            "smollm2",
            center_unembed=True,
            center_writing_weights=True,
            fold_ln=True,
            refactor_factored_attn_matrices=True,
        )


def test_cell_20_test_prompt(ioi: IOI, capsys: pytest.CaptureFixture[str]) -> None:
    example_prompt = "After John and Mary went to the store, John gave a bottle of milk to"
    example_answer = " Mary"
    utils.test_prompt(example_prompt, example_answer, ioi.model, prepend_bos=True)
    out = capsys.readouterr().out
    assert "Rank: 0" in out and "Ranks of the answer tokens: [(' Mary', 0)]" in out


def test_cell_28_logit_differences(ioi: IOI) -> None:
    per_prompt = logits_to_ave_logit_diff(ioi.original_logits, ioi.answer_tokens, per_prompt=True)
    assert per_prompt.shape == (8,) and bool((per_prompt > 0).all())
    assert float(per_prompt.mean()) > 2.0


def test_cells_34_36_the_final_residual_stream_gives_the_logit_difference(ioi: IOI) -> None:
    original_average_logit_diff = logits_to_ave_logit_diff(ioi.original_logits, ioi.answer_tokens)
    final_residual_stream = ioi.cache["resid_post", -1]
    final_token_residual_stream = final_residual_stream[:, -1, :]
    scaled_final_token_residual_stream = ioi.cache.apply_ln_to_stack(
        final_token_residual_stream, layer=-1, pos_slice=-1
    )
    average_logit_diff = einsum(
        "batch d_model, batch d_model -> ", scaled_final_token_residual_stream, ioi.logit_diff_directions
    ) / len(ioi.prompts)
    assert float(average_logit_diff) == pytest.approx(float(original_average_logit_diff), abs=1e-3)


def test_cells_34_36_through_load_model_too(ioi: IOI, smollm2: mechlab.LoadedModel) -> None:
    # The case: the same cells on mechlab.load_model's (unfolded) model gave 2.31 for 4.01.
    model = smollm2.model
    wanted = {"ln_final.hook_scale", "blocks.29.hook_resid_post"}  # (a filter keeps the cache small)
    original_logits, cache = model.run_with_cache(ioi.tokens, names_filter=lambda name: name in wanted)
    answer_residual_directions = model.tokens_to_residual_directions(ioi.answer_tokens)
    logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    scaled = cache.apply_ln_to_stack(cache["resid_post", -1][:, -1, :], layer=-1, pos_slice=-1)
    average_logit_diff = einsum("batch d_model, batch d_model -> ", scaled, logit_diff_directions) / len(
        ioi.prompts
    )
    original = logits_to_ave_logit_diff(original_logits, ioi.answer_tokens)
    assert float(average_logit_diff) == pytest.approx(float(original), abs=1e-3)
    compat = logits_to_ave_logit_diff(ioi.original_logits, ioi.answer_tokens)
    assert float(original) == pytest.approx(float(compat), abs=1e-3)  # folding keeps logit differences


def test_cells_41_44_logit_lens_and_layer_attribution(ioi: IOI) -> None:
    original_average_logit_diff = float(logits_to_ave_logit_diff(ioi.original_logits, ioi.answer_tokens))
    accumulated_residual, labels = ioi.cache.accumulated_resid(
        layer=-1, incl_mid=True, pos_slice=-1, return_labels=True
    )
    logit_lens_logit_diffs = residual_stack_to_logit_diff(accumulated_residual, ioi.cache, ioi)
    assert logit_lens_logit_diffs.shape == (2 * ioi.model.cfg.n_layers + 1,)
    assert labels[-1] == "final_post"
    assert float(logit_lens_logit_diffs[-1]) == pytest.approx(original_average_logit_diff, abs=1e-3)
    per_layer_residual, labels = ioi.cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    per_layer_logit_diffs = residual_stack_to_logit_diff(per_layer_residual, ioi.cache, ioi)
    assert labels[:2] == ["embed", "0_attn_out"]  # model: rotary, no pos_embed row
    assert float(per_layer_logit_diffs.sum()) == pytest.approx(original_average_logit_diff, abs=1e-3)


def test_cell_47_head_attribution(ioi: IOI) -> None:
    model = ioi.model
    per_head_residual, labels = ioi.cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)  # noqa: RUF059
    per_head_logit_diffs = residual_stack_to_logit_diff(per_head_residual, ioi.cache, ioi)
    per_head_logit_diffs = einops.rearrange(
        per_head_logit_diffs,
        "(layer head_index) -> layer head_index",
        layer=model.cfg.n_layers,
        head_index=model.cfg.n_heads,
    )
    # Heads, MLPs and the embedding make up the whole stream (SmolLM2 has no biases).
    mlp = residual_stack_to_logit_diff(
        ioi.cache.decompose_resid(layer=-1, pos_slice=-1, mode="mlp"), ioi.cache, ioi
    )
    total = float(per_head_logit_diffs.sum() + mlp.sum())
    assert total == pytest.approx(
        float(logits_to_ave_logit_diff(ioi.original_logits, ioi.answer_tokens)), abs=1e-3
    )
    assert float(per_head_logit_diffs.max()) > 0.5  # some heads write the answer (name movers)


def _corrupted(ioi: IOI) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell 59: each prompt's pair partner as its corrupted prompt."""
    corrupted_prompts = []
    for i in range(0, len(ioi.prompts), 2):
        corrupted_prompts.append(ioi.prompts[i + 1])
        corrupted_prompts.append(ioi.prompts[i])
    corrupted_tokens = ioi.model.to_tokens(corrupted_prompts, prepend_bos=True)
    corrupted_logits, corrupted_cache = ioi.model.run_with_cache(corrupted_tokens, return_type="logits")  # noqa: RUF059
    return corrupted_tokens, logits_to_ave_logit_diff(corrupted_logits, ioi.answer_tokens)


def patch_residual_component(corrupted_residual_component, hook, pos, clean_cache):  # type: ignore[no-untyped-def]
    """Cell 62."""
    corrupted_residual_component[:, pos, :] = clean_cache[hook.name][:, pos, :]
    return corrupted_residual_component


def test_cells_59_to_62_residual_stream_patching(ioi: IOI) -> None:
    model, tokens, cache = ioi.model, ioi.tokens, ioi.cache
    corrupted_tokens, corrupted_average_logit_diff = _corrupted(ioi)
    original_average_logit_diff = logits_to_ave_logit_diff(ioi.original_logits, ioi.answer_tokens)
    assert float(corrupted_average_logit_diff) < -1.0

    def normalize_patched_logit_diff(patched_logit_diff):  # type: ignore[no-untyped-def]
        return (patched_logit_diff - corrupted_average_logit_diff) / (
            original_average_logit_diff - corrupted_average_logit_diff
        )

    swapped = int((tokens[0] != corrupted_tokens[0]).nonzero())
    layers = (0,)  # size: range(model.cfg.n_layers)
    positions = (swapped - 1, swapped, tokens.shape[1] - 1)  # size: range(tokens.shape[1])
    patched_residual_stream_diff = torch.zeros(len(layers), len(positions), dtype=torch.float32)
    for row, layer in enumerate(layers):
        for column, position in enumerate(positions):
            hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
            patched_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("resid_pre", layer), hook_fn)],
                return_type="logits",
            )
            patched_logit_diff = logits_to_ave_logit_diff(patched_logits, ioi.answer_tokens)
            patched_residual_stream_diff[row, column] = normalize_patched_logit_diff(patched_logit_diff)
    # The prompts of a pair differ only in the second name: patching layer 0's input there restores
    # the clean run, anywhere else changes nothing.
    torch.testing.assert_close(
        patched_residual_stream_diff[0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-4, rtol=0
    )


@pytest.mark.slow
def test_cells_67_to_85_layer_and_head_patching(ioi: IOI) -> None:
    model, cache = ioi.model, ioi.cache
    corrupted_tokens, corrupted_average_logit_diff = _corrupted(ioi)
    original_average_logit_diff = logits_to_ave_logit_diff(ioi.original_logits, ioi.answer_tokens)

    def normalize_patched_logit_diff(patched_logit_diff):  # type: ignore[no-untyped-def]
        return (patched_logit_diff - corrupted_average_logit_diff) / (
            original_average_logit_diff - corrupted_average_logit_diff
        )

    last = model.cfg.n_layers - 1
    # Cell 67 (size: the last layer, the final position).
    hook_fn = partial(patch_residual_component, pos=-1, clean_cache=cache)
    attn = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(utils.get_act_name("attn_out", last), hook_fn)])
    mlp = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(utils.get_act_name("mlp_out", last), hook_fn)])
    for patched in (attn, mlp):
        assert (
            -1.0
            < float(normalize_patched_logit_diff(logits_to_ave_logit_diff(patched, ioi.answer_tokens)))
            < 1.0
        )

    def patch_head_vector(corrupted_head_vector, hook, head_index, clean_cache):  # type: ignore[no-untyped-def]
        corrupted_head_vector[:, :, head_index, :] = clean_cache[hook.name][:, :, head_index, :]
        return corrupted_head_vector

    def patch_head_pattern(corrupted_head_pattern, hook, head_index, clean_cache):  # type: ignore[no-untyped-def]
        corrupted_head_pattern[:, head_index, :, :] = clean_cache[hook.name][:, head_index, :, :]
        return corrupted_head_pattern

    # Cells 73, 79, 85 (size: the last layer). model: hook_v has n_key_value_heads heads.
    results = {}
    for act, fn, n in (
        ("z", patch_head_vector, model.cfg.n_heads),
        ("v", patch_head_vector, model.cfg.n_key_value_heads),
        ("attn", patch_head_pattern, model.cfg.n_heads),
    ):
        row = []
        for head_index in range(n):
            hook = partial(fn, head_index=head_index, clean_cache=cache)
            patched = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name(act, last, "attn"), hook)],
                return_type="logits",
            )
            row.append(
                float(normalize_patched_logit_diff(logits_to_ave_logit_diff(patched, ioi.answer_tokens)))
            )
        results[act] = torch.tensor(row)
    # Patching all of a key/value head's query heads' outputs moves the logit difference the way
    # patching their shared value does only when attention is unchanged; both stay bounded here.
    assert all(bool((r.abs() < 1.0).all()) for r in results.values())
    assert results["v"].shape == (model.cfg.n_key_value_heads,)


def test_cells_94_98_induction_and_previous_token_heads(ioi: IOI) -> None:
    model = ioi.model
    seq_len = 30  # size: 100
    batch_size = 2
    prev_token_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads))

    def prev_token_hook(pattern, hook):  # type: ignore[no-untyped-def]
        layer = hook.layer()
        diagonal = pattern.diagonal(offset=1, dim1=-1, dim2=-2)
        prev_token_scores[layer] = einops.reduce(diagonal, "batch head_index diagonal -> head_index", "mean")

    duplicate_token_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads))

    def duplicate_token_hook(pattern, hook):  # type: ignore[no-untyped-def]
        layer = hook.layer()
        diagonal = pattern.diagonal(offset=seq_len, dim1=-1, dim2=-2)
        duplicate_token_scores[layer] = einops.reduce(
            diagonal, "batch head_index diagonal -> head_index", "mean"
        )

    induction_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads))

    def induction_hook(pattern, hook):  # type: ignore[no-untyped-def]
        layer = hook.layer()
        diagonal = pattern.diagonal(offset=seq_len - 1, dim1=-1, dim2=-2)
        induction_scores[layer] = einops.reduce(diagonal, "batch head_index diagonal -> head_index", "mean")

    torch.manual_seed(0)
    original_tokens = torch.randint(100, 20000, size=(batch_size, seq_len), device="cpu")
    repeated_tokens = einops.repeat(original_tokens, "batch seq_len -> batch (2 seq_len)")
    pattern_filter = lambda act_name: act_name.endswith("hook_pattern")  # noqa: E731
    loss = model.run_with_hooks(
        repeated_tokens,
        return_type="loss",
        fwd_hooks=[
            (pattern_filter, prev_token_hook),
            (pattern_filter, duplicate_token_hook),
            (pattern_filter, induction_hook),
        ],
    )
    assert float(loss) < 9.0  # the first, random half is unpredictable (ln 49152 = 10.8)
    assert divmod(int(induction_scores.argmax()), model.cfg.n_heads) in {(18, 6), (18, 7), (23, 7)}
    assert float(induction_scores.max()) > 0.5
    assert float(prev_token_scores.max()) > 0.5
    assert utils.get_corner(prev_token_scores).shape == (3, 3)


def test_cells_105_109_ablating_the_top_name_mover(ioi: IOI) -> None:
    model = ioi.model
    per_head_residual = ioi.cache.stack_head_results(layer=-1, pos_slice=-1)
    per_head_logit_diffs = residual_stack_to_logit_diff(per_head_residual, ioi.cache, ioi)
    original_average_logit_diff = float(logits_to_ave_logit_diff(ioi.original_logits, ioi.answer_tokens))
    top_name_mover = per_head_logit_diffs.flatten().argmax().item()
    top_name_mover_layer = top_name_mover // model.cfg.n_heads
    top_name_mover_head = top_name_mover % model.cfg.n_heads

    def ablate_top_head_hook(z: Float[torch.Tensor, "batch pos head_index d_head"], hook):  # type: ignore[no-untyped-def]
        z[:, -1, top_name_mover_head, :] = 0
        return z

    model.blocks[top_name_mover_layer].attn.hook_z.add_hook(ablate_top_head_hook)
    try:
        ablated_logits, ablated_cache = model.run_with_cache(ioi.tokens)
    finally:
        model.reset_hooks()  # test hygiene: the model is shared across tests
    ablated = float(logits_to_ave_logit_diff(ablated_logits, ioi.answer_tokens))
    assert ablated < original_average_logit_diff
    per_head_ablated_residual = ablated_cache.stack_head_results(layer=-1, pos_slice=-1)
    per_head_ablated_logit_diffs = residual_stack_to_logit_diff(per_head_ablated_residual, ablated_cache, ioi)
    assert float(per_head_ablated_logit_diffs.flatten()[top_name_mover]) == pytest.approx(0.0, abs=1e-4)
    ratio = (ioi.cache["ln_final.hook_scale"][:, -1] / ablated_cache["ln_final.hook_scale"][:, -1]).mean()
    assert 0.5 < float(ratio) < 2.0
