"""TransformerLens v2.18.0 ``demos/Main_Demo.ipynb``, ported to SmolLM2 through ``mechlab.compat``.

Each test names the notebook cells it runs. Changed from the notebook, and only this: the import
line (``from mechlab.compat import ...`` for ``transformer_lens``), the model (``"smollm2"`` for
``"gpt2-small"``), constants the model dictates (marked ``# model:``), sizes cut for 2 CPU cores
(marked ``# size:``), and ``print``/plots turned into assertions. Not ported: cells 52-53 (a second
model-zoo model, distilgpt2), 137-146 (model-zoo training checkpoints and ``evals`` on them).
"""

from collections.abc import Iterator
from functools import partial

import einops
import pytest
import torch
from jaxtyping import Float

from mechlab.compat import FactoredMatrix, HookedRootModule, HookedTransformer, HookPoint, utils

pytestmark = pytest.mark.smollm2


@pytest.fixture(autouse=True)
def no_grad() -> Iterator[None]:
    """Cell 10: ``torch.set_grad_enabled(False)``, undone after each test."""
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(previous)


@pytest.fixture
def model(ht_smollm2: HookedTransformer) -> Iterator[HookedTransformer]:
    """Cell 17: ``HookedTransformer.from_pretrained("gpt2-small", device=device)``, here SmolLM2."""
    yield ht_smollm2
    ht_smollm2.reset_hooks()


def test_cell_19_loss(model: HookedTransformer) -> None:
    text = "HookedTransformer comes loaded with >40 open source GPT-style models. You can load any of them in with `HookedTransformer.from_pretrained(MODEL_NAME)`."  # noqa: E501
    loss = model(text, return_type="loss")
    tokens = model.to_tokens(text)
    assert float(loss) == pytest.approx(float(utils.lm_cross_entropy_loss(model(tokens), tokens)), abs=1e-5)
    assert 1.0 < float(loss) < 6.0


def test_cells_21_to_26_cache_and_stop_at_layer(model: HookedTransformer) -> None:
    gpt2_text = "Natural language processing tasks, such as question answering, machine translation, reading comprehension, and summarization, are typically approached with supervised learning on taskspecific datasets."  # noqa: E501
    gpt2_tokens = model.to_tokens(gpt2_text)
    gpt2_logits, gpt2_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True)  # noqa: RUF059
    attention_pattern = gpt2_cache["pattern", 0, "attn"]
    assert attention_pattern.shape == (model.cfg.n_heads, gpt2_tokens.shape[1], gpt2_tokens.shape[1])
    assert len(model.to_str_tokens(gpt2_text)) == gpt2_tokens.shape[1]
    attn_hook_name = "blocks.0.attn.hook_pattern"
    attn_layer = 0
    _, gpt2_attn_cache = model.run_with_cache(
        gpt2_tokens, remove_batch_dim=True, stop_at_layer=attn_layer + 1, names_filter=[attn_hook_name]
    )
    gpt2_attn = gpt2_attn_cache[attn_hook_name]
    assert torch.equal(gpt2_attn, attention_pattern)


def test_cell_30_head_ablation(model: HookedTransformer) -> None:
    gpt2_tokens = model.to_tokens(
        "Natural language processing tasks are typically approached with supervised learning."
    )
    layer_to_ablate = 0
    head_index_to_ablate = 2  # model: hook_v has 3 key/value heads (the demo's 8 is a query head)

    def head_ablation_hook(
        value: Float[torch.Tensor, "batch pos head_index d_head"], hook: HookPoint
    ) -> Float[torch.Tensor, "batch pos head_index d_head"]:
        value[:, :, head_index_to_ablate, :] = 0.0
        return value

    original_loss = model(gpt2_tokens, return_type="loss")
    ablated_loss = model.run_with_hooks(
        gpt2_tokens,
        return_type="loss",
        fwd_hooks=[(utils.get_act_name("v", layer_to_ablate), head_ablation_hook)],
    )
    assert float(ablated_loss) > float(original_loss) + 0.05


@pytest.mark.parametrize(
    "layers",
    [pytest.param((0,), id="layer-0"), pytest.param((0, 15, 29), id="3-layers", marks=pytest.mark.slow)],
)
def test_cells_35_37_residual_stream_patching(model: HookedTransformer, layers: tuple[int, ...]) -> None:
    clean_prompt = "After John and Mary went to the store, Mary gave a bottle of milk to"
    corrupted_prompt = "After John and Mary went to the store, John gave a bottle of milk to"
    clean_tokens = model.to_tokens(clean_prompt)
    corrupted_tokens = model.to_tokens(corrupted_prompt)

    def logits_to_logit_diff(logits, correct_answer=" John", incorrect_answer=" Mary"):  # type: ignore[no-untyped-def]
        correct_index = model.to_single_token(correct_answer)
        incorrect_index = model.to_single_token(incorrect_answer)
        return logits[0, -1, correct_index] - logits[0, -1, incorrect_index]

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    clean_logit_diff = logits_to_logit_diff(clean_logits)
    corrupted_logits = model(corrupted_tokens)
    corrupted_logit_diff = logits_to_logit_diff(corrupted_logits)
    assert float(clean_logit_diff) > 2 and float(corrupted_logit_diff) < -2

    def residual_stream_patching_hook(
        resid_pre: Float[torch.Tensor, "batch pos d_model"], hook: HookPoint, position: int
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        clean_resid_pre = clean_cache[hook.name]
        resid_pre[:, position, :] = clean_resid_pre[:, position, :]
        return resid_pre

    num_positions = len(clean_tokens[0])
    swapped = int((clean_tokens[0] != corrupted_tokens[0]).nonzero())
    # size: `layers` and `positions` replace range(model.cfg.n_layers) and range(num_positions)
    positions = (swapped - 1, swapped, num_positions - 1)
    ioi_patching_result = torch.zeros((len(layers), len(positions)), device=model.cfg.device)
    for row, layer in enumerate(layers):
        for column, position in enumerate(positions):
            temp_hook_fn = partial(residual_stream_patching_hook, position=position)
            patched_logits = model.run_with_hooks(
                corrupted_tokens, fwd_hooks=[(utils.get_act_name("resid_pre", layer), temp_hook_fn)]
            )
            patched_logit_diff = logits_to_logit_diff(patched_logits).detach()
            ioi_patching_result[row, column] = (patched_logit_diff - corrupted_logit_diff) / (
                clean_logit_diff - corrupted_logit_diff
            )
    # Layer 0's input differs only at the swapped name: patching it there restores the clean run.
    torch.testing.assert_close(ioi_patching_result[0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-4, rtol=0)
    if layers[-1] == model.cfg.n_layers - 1:
        # Before the last layer the answer is read from the final position alone.
        assert float(ioi_patching_result[-1, -1]) > 0.9
        assert float(ioi_patching_result[-1, :-1].abs().max()) < 0.1


def test_cells_44_46_induction_on_repeated_tokens(model: HookedTransformer) -> None:
    torch.manual_seed(50)
    batch_size = 2  # size: 10
    seq_len = 20  # size: 50
    size = (batch_size, seq_len)
    input_tensor = torch.randint(1000, 10000, size)
    random_tokens = input_tensor.to(model.cfg.device)
    repeated_tokens = einops.repeat(random_tokens, "batch seq_len -> batch (2 seq_len)")
    repeated_logits = model(repeated_tokens)
    correct_log_probs = model.loss_fn(repeated_logits, repeated_tokens, per_token=True)
    loss_by_position = einops.reduce(correct_log_probs, "batch position -> position", "mean")
    assert float(loss_by_position[seq_len:].mean()) < float(loss_by_position[: seq_len - 1].mean()) - 3

    induction_score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)

    def induction_score_hook(
        pattern: Float[torch.Tensor, "batch head_index dest_pos source_pos"], hook: HookPoint
    ):  # type: ignore[no-untyped-def]
        induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
        induction_score = einops.reduce(induction_stripe, "batch head_index position -> head_index", "mean")
        induction_score_store[hook.layer(), :] = induction_score

    pattern_hook_names_filter = lambda name: name.endswith("pattern")  # noqa: E731
    model.run_with_hooks(
        repeated_tokens, return_type=None, fwd_hooks=[(pattern_hook_names_filter, induction_score_hook)]
    )
    assert bool((induction_score_store > 0).all())  # every layer's hook fired
    top = divmod(int(induction_score_store.argmax()), model.cfg.n_heads)
    assert top in {(18, 6), (18, 7), (23, 7)}  # SmolLM2's induction heads (mechlab's detectors)
    assert float(induction_score_store.max()) > 0.5


def test_cells_60_62_parameter_names(model: HookedTransformer) -> None:
    block_0 = {name: param.shape for name, param in model.named_parameters() if name.startswith("blocks.0.")}
    d_model, d_head, d_mlp = model.cfg.d_model, model.cfg.d_head, model.cfg.d_mlp
    n_heads, n_kv = model.cfg.n_heads, model.cfg.n_key_value_heads
    assert block_0 == {
        "blocks.0.attn.W_Q": (n_heads, d_model, d_head),
        "blocks.0.attn._W_K": (n_kv, d_model, d_head),  # model: grouped-query attention
        "blocks.0.attn._W_V": (n_kv, d_model, d_head),
        "blocks.0.attn.W_O": (n_heads, d_head, d_model),
        "blocks.0.attn.b_Q": (n_heads, d_head),
        "blocks.0.attn._b_K": (n_kv, d_head),
        "blocks.0.attn._b_V": (n_kv, d_head),
        "blocks.0.attn.b_O": (d_model,),
        "blocks.0.mlp.W_in": (d_model, d_mlp),
        "blocks.0.mlp.W_gate": (d_model, d_mlp),  # model: gated MLP
        "blocks.0.mlp.W_out": (d_mlp, d_model),
        "blocks.0.mlp.b_in": (d_mlp,),
        "blocks.0.mlp.b_out": (d_model,),
    }
    outside = {name for name, _ in model.named_parameters() if not name.startswith("blocks")}
    assert outside == {"embed.W_E", "unembed.W_U", "unembed.b_U"}  # model: rotary, no pos_embed.W_pos


def test_cell_64_hook_names_seen_by_a_filter(model: HookedTransformer) -> None:
    test_prompt = "The quick brown fox jumped over the lazy dog"
    seen = []

    def print_name_shape_hook_function(activation, hook):  # type: ignore[no-untyped-def]
        seen.append((hook.name, tuple(activation.shape)))

    not_in_late_block_filter = lambda name: name.startswith("blocks.0.") or not name.startswith("blocks")  # noqa: E731
    model.run_with_hooks(
        test_prompt, return_type=None, fwd_hooks=[(not_in_late_block_filter, print_name_shape_hook_function)]
    )
    names = {name for name, _ in seen}
    assert len(names) == len(seen)  # each hook point fires once
    assert names == {
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.ln1.hook_scale",
        "blocks.0.ln1.hook_normalized",
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
        "blocks.0.attn.hook_rot_q",
        "blocks.0.attn.hook_rot_k",
        "blocks.0.attn.hook_attn_scores",
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_z",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_mid",
        "blocks.0.ln2.hook_scale",
        "blocks.0.ln2.hook_normalized",
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_pre_linear",
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
        "ln_final.hook_scale",
        "ln_final.hook_normalized",
    }
    assert dict(seen)["blocks.0.attn.hook_k"][-2] == model.cfg.n_key_value_heads


def test_cells_68_71_unembed_bias(model: HookedTransformer) -> None:
    unembed_bias = model.unembed.b_U
    bias_values, bias_indices = unembed_bias.sort(descending=True)  # noqa: RUF059
    # model: Llama has no unembedding bias; HookedTransformer fills zeros (centred: still zeros).
    assert bias_values.shape == (model.cfg.d_vocab,) and not bool(bias_values.any())
    john_bias = model.unembed.b_U[model.to_single_token(" John")]
    mary_bias = model.unembed.b_U[model.to_single_token(" Mary")]
    assert float(torch.exp(john_bias - mary_bias)) == 1.0


def test_cells_75_to_97_tokenization(model: HookedTransformer) -> None:
    example_text = "The first thing you need to figure out is *how* things are tokenized."
    example_text_str_tokens = model.to_str_tokens(example_text)
    example_text_tokens = model.to_tokens(example_text)
    assert len(example_text_str_tokens) == example_text_tokens.shape[1]
    example_multi_text = ["The cat sat on the mat.", "The cat sat on the mat really hard."]
    example_multi_text_tokens = model.to_tokens(example_multi_text)
    assert example_multi_text_tokens.shape == (2, len(model.to_str_tokens(example_multi_text[1])))
    cat_logits = model("The cat sat on the mat.")
    cat_probs = cat_logits.softmax(dim=-1)
    capital_the_token_index = model.to_single_token(" The")
    assert 0.0 < float(cat_probs[0, -1, capital_the_token_index]) < 1.0
    assert model.to_string(example_text_tokens.squeeze()) == example_text
    # model: SmolLM2's tokenizer adds no BOS, so mechlab's default is prepend_bos=False (gpt2's is True).
    assert model.get_token_position(" cat", "The cat sat on the mat") == 1
    assert model.get_token_position(" cat", "The cat sat on the mat", prepend_bos=True) == 2
    assert model.get_token_position(" cat", "The cat sat on the mat", prepend_bos=False) == 1
    sentence = "The cat sat on the mat. The mat sat on the cat."
    assert model.get_token_position(" cat", sentence, mode="first") == 1
    assert model.get_token_position(" cat", sentence, mode="last") == len(model.to_str_tokens(sentence)) - 2
    assert model("Hello World").shape[1] == 2
    assert model("Hello World", prepend_bos=True).shape[1] == 3
    assert model("Hello World", prepend_bos=False).shape[1] == 2
    assert model.to_str_tokens(" Claire", prepend_bos=False) == [" Claire"]


def test_cells_101_to_107_factored_matrix() -> None:
    torch.manual_seed(50)
    A = torch.randn(5, 2)
    B = torch.randn(2, 5)
    AB = A @ B
    AB_factor = FactoredMatrix(A, B)
    assert float(AB_factor.norm()) == pytest.approx(float(AB.norm()), rel=1e-5)
    assert (AB_factor.rdim, AB_factor.ldim, AB_factor.mdim) == (5, 5, 2)
    torch.testing.assert_close(AB_factor.S, torch.linalg.svd(AB).S[:2], atol=1e-5, rtol=1e-5)
    C = torch.randn(5, 300)
    ABC = AB @ C
    ABC_factor = AB_factor @ C
    assert float(ABC_factor.norm()) == pytest.approx(float(ABC.norm()), rel=1e-4)
    assert torch.isclose(AB_factor.AB, AB).all()


def test_cells_110_to_112_ov_circuit_eigenvalues(model: HookedTransformer) -> None:
    OV_circuit_all_heads = model.OV
    OV_circuit_all_heads_eigenvalues = OV_circuit_all_heads.eigenvalues
    assert OV_circuit_all_heads_eigenvalues.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    assert OV_circuit_all_heads_eigenvalues.dtype == torch.complex64
    OV_copying_score = OV_circuit_all_heads_eigenvalues.sum(
        dim=-1
    ).real / OV_circuit_all_heads_eigenvalues.abs().sum(dim=-1)
    assert bool((OV_copying_score.abs() <= 1 + 1e-5).all())
    # Query heads sharing a key/value head share W_V but not W_O: their OV circuits differ.
    assert not torch.allclose(OV_copying_score[0, 0], OV_copying_score[0, 1])


@pytest.mark.slow
def test_cells_116_to_118_full_ov_circuit(model: HookedTransformer) -> None:
    from mechlab.detectors.copying import ov_eigenvalues
    from mechlab.sites import kv_head

    OV_circuit_all_heads = model.OV
    full_OV_circuit = model.embed.W_E @ OV_circuit_all_heads @ model.unembed.W_U
    full_OV_circuit_eigenvalues = full_OV_circuit.eigenvalues
    assert full_OV_circuit_eigenvalues.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    full_OV_copying_score = full_OV_circuit_eigenvalues.sum(
        dim=-1
    ).real / full_OV_circuit_eigenvalues.abs().sum(dim=-1)
    # The same spectra from the per-key/value-head W_V and mechlab's own grouping (mechlab.kv_head):
    # the per-query-head expansion pairs each query head with its key/value head.
    compact = torch.stack([block.attn._W_V for block in model.blocks])
    kv = torch.tensor([kv_head(model.cfg, head) for head in range(model.cfg.n_heads)])
    reference = ov_eigenvalues(model.W_O, model.W_U @ model.W_E, compact, kv)
    reference_score = reference.sum(-1).real / reference.abs().sum(-1)
    torch.testing.assert_close(full_OV_copying_score.double(), reference_score, atol=2e-3, rtol=0)


def test_cell_124_generate(model: HookedTransformer) -> None:
    prompt = "(CNN) President Barack Obama caught in embarrassing new scandal\n"
    text = model.generate(
        prompt, max_new_tokens=4, temperature=0.7, prepend_bos=True, verbose=False
    )  # size: 50
    assert isinstance(text, str) and text.startswith(prompt[:20]) and len(text) > len(prompt)


def test_cells_129_to_133_hooked_root_module() -> None:
    class SquareThenAdd(torch.nn.Module):
        def __init__(self, offset):  # type: ignore[no-untyped-def]
            super().__init__()
            self.offset = torch.nn.Parameter(torch.tensor(offset))
            self.hook_square = HookPoint()

        def forward(self, x):  # type: ignore[no-untyped-def]
            square = self.hook_square(x * x)
            return self.offset + square

    class TwoLayerModel(HookedRootModule):
        def __init__(self):  # type: ignore[no-untyped-def]
            super().__init__()
            self.layer1 = SquareThenAdd(3.0)
            self.layer2 = SquareThenAdd(-4.0)
            self.hook_in = HookPoint()
            self.hook_mid = HookPoint()
            self.hook_out = HookPoint()
            super().setup()

        def forward(self, x):  # type: ignore[no-untyped-def]
            x_in = self.hook_in(x)
            x_mid = self.hook_mid(self.layer1(x_in))
            x_out = self.hook_out(self.layer2(x_mid))
            return x_out

    model = TwoLayerModel()
    out, cache = model.run_with_cache(torch.tensor(5.0))
    assert out.item() == 780.0
    assert {key: cache[key].item() for key in cache} == {
        "hook_in": 5.0,
        "layer1.hook_square": 25.0,
        "hook_mid": 28.0,
        "layer2.hook_square": 784.0,
        "hook_out": 780.0,
    }
    names = []

    def set_to_zero_hook(tensor, hook):  # type: ignore[no-untyped-def]
        names.append(hook.name)
        return torch.tensor(0.0)

    assert (
        model.run_with_hooks(torch.tensor(5.0), fwd_hooks=[("layer2.hook_square", set_to_zero_hook)]).item()
        == -4.0
    )
    assert names == ["layer2.hook_square"]
