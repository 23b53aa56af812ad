"""``mechlab.compat``'s surface: the import line, ``from_pretrained``'s arguments, ``utils``, and
mechlab's own functions on a ``HookedTransformer``."""

import ast
import importlib
import re
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.compat import HookedTransformer, utils
from mechlab.detectors.copying import CopyingDetector
from mechlab.errors import CompatError
from tests.compat.helpers import compat_toy, toy

# Every public name of transformer_lens/utils.py at v2.18.0 (functions, classes, constants and the
# names it re-exports).
UTILS_2_18 = """ACTIVATION_FN_DICT CACHE_DIR FactoredMatrix LocallyOverridenDefaults Slice SliceInput
USE_DEFAULT_VALUE XIELU calc_fan_in_and_fan_out check_structure clear_huggingface_cache composition_scores
download_file_from_hf gelu_fast gelu_new gelu_pytorch_tanh get_act_name get_attention_mask get_corner
get_cumsum_along_dim get_dataset get_device get_input_with_manually_prepended_bos get_nested_attr
get_offset_position_ids get_tokenizer_with_bos get_tokens_with_bos_removed init_kaiming_normal_
init_kaiming_uniform_ init_xavier_normal_ init_xavier_uniform_ is_library_available is_lower_triangular
is_square keep_single_column lm_accuracy lm_cross_entropy_loss override_or_use_default_value print_gpu_mem
remove_batch_dim repeat_along_head_dimension sample_logits select_compatible_kwargs set_nested_attr solu
test_prompt to_numpy tokenize_and_concatenate transpose warn_if_mps xielu""".split()


def test_the_one_line_migration_imports_what_transformer_lens_2_had() -> None:
    namespace: dict[str, object] = {}
    exec(
        "from mechlab.compat import utils, HookedTransformer, ActivationCache, FactoredMatrix, HookPoint\n"
        "from mechlab.compat import HookedRootModule, patching, evals, head_detector\n"
        "import mechlab.compat.utils as utils2\n"
        "from mechlab.compat.hook_points import HookPoint as HP, HookedRootModule as HRM\n"
        "from mechlab.compat.patching import get_act_patch_resid_pre\n"
        "from mechlab.compat.head_detector import detect_head\n",
        namespace,
    )
    assert namespace["utils"] is namespace["utils2"]
    assert callable(namespace["get_act_patch_resid_pre"]) and callable(namespace["detect_head"])


def test_utils_has_every_name_transformer_lens_2_18_utils_had() -> None:
    missing = [name for name in UTILS_2_18 if not hasattr(utils, name)]
    assert missing == []
    assert utils.get_act_name("k", 6, "a") == "blocks.6.attn.hook_k"
    assert utils.get_act_name("scale4ln1") == "blocks.4.ln1.hook_scale"
    assert utils.ACTIVATION_FN_DICT["gelu_new"] is utils.gelu_new
    assert utils.to_numpy(torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]


def test_utils_lists_exactly_its_names() -> None:
    tree = ast.parse(Path(utils.__file__).read_text())
    exported = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and node.targets[0].id == "__all__"  # type: ignore[attr-defined]
    )
    assert sorted(ast.literal_eval(exported)) == sorted(UTILS_2_18)


def test_lm_cross_entropy_loss_is_the_models_loss() -> None:
    model = compat_toy("tiny")
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model(tokens, return_type="loss")
        by_hand = utils.lm_cross_entropy_loss(model(tokens), tokens)
    assert float(loss) == pytest.approx(float(by_hand), abs=1e-6)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("checkpoint_index", 3),
        ("hf_model", object()),
        ("tokenizer", object()),
        ("n_ctx", 128),
        ("n_devices", 2),
        ("cache_dir", "/tmp"),
        ("dtype", "float8"),
    ],
)
def test_from_pretrained_refuses_what_a_mechlab_source_cannot_honour(argument: str, value: object) -> None:
    with pytest.raises(
        CompatError, match=rf"from_pretrained\({argument}=\.\.\.\) is not supported.*toy:tiny"
    ):
        HookedTransformer.from_pretrained("toy:tiny", **{argument: value})


def test_from_pretrained_takes_any_mechlab_source() -> None:
    model = HookedTransformer.from_pretrained("toy:tiny-gqa", device=None, dtype="float32")
    assert isinstance(model, HookedTransformer) and isinstance(model, mechlab.models.hooked.HookedBridge)
    assert model.cfg.device == "cpu" and model.W_E.dtype == torch.float32
    assert model.W_K.shape[1] == model.cfg.n_heads
    assert float(model.W_U.detach().mean(-1).abs().max()) < 1e-6  # center_unembed
    raw = HookedTransformer.from_pretrained_no_processing("toy:tiny-gqa")
    assert float(raw.W_U.detach().mean(-1).abs().max()) > 1e-3


def test_a_config_is_no_way_to_build_one() -> None:
    with pytest.raises(CompatError, match="toy:n_layers=2"):
        HookedTransformer({"n_layers": 2})


def test_grouped_keys_stay_grouped_in_the_hooks() -> None:
    model = compat_toy("tiny-gqa")
    model.set_ungroup_grouped_query_attention(False)
    with pytest.raises(CompatError, match=r"repeat_interleave\(2, dim=-2\)"):
        model.set_ungroup_grouped_query_attention(True)


def test_process_weights_in_place_folds_as_from_pretrained_does() -> None:
    off = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    model, reference = compat_toy("tiny", **off), compat_toy("tiny")
    tokens = torch.arange(10)[None]
    with torch.no_grad():
        before = model(tokens)
        model.process_weights_()
        after = model(tokens)
    torch.testing.assert_close(after, before - before.mean(-1, keepdim=True), atol=1e-5, rtol=1e-5)
    assert "blocks.0.ln1.w" not in model.state_dict()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    assert model.blocks[0].hook_resid_pre.name == "blocks.0.hook_resid_pre"  # names survive processing


def test_mechlab_functions_give_the_same_numbers_on_a_hooked_transformer() -> None:
    # mechlab's weight detectors read W_K/W_V per key/value head; given HookedTransformer's per-query-
    # head tensors they must still pair each query head with its own key/value head.
    raw = toy("tiny-gqa")
    scores = CopyingDetector().weight_scores(raw)
    for options in ({}, dict(fold_ln=False, center_writing_weights=False, center_unembed=False)):
        model = compat_toy("tiny-gqa", **options)
        torch.testing.assert_close(CopyingDetector().weight_scores(model), scores, atol=1e-5, rtol=1e-5)
    tokens = torch.randint(1, 50, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        top = int(raw(tokens)[0, -1].argmax())
    off = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    dla_raw = mechlab.direct_logit_attribution(raw, tokens, top, contrast=(top + 1) % 50)
    dla_same = mechlab.direct_logit_attribution(
        compat_toy("tiny-gqa", **off), tokens, top, contrast=(top + 1) % 50
    )
    torch.testing.assert_close(dla_same.heads, dla_raw.heads, atol=1e-5, rtol=1e-5)
    # Folding moves the norms' bias (through b_V) from the heads into b_O; the total stays.
    dla_folded = mechlab.direct_logit_attribution(
        compat_toy("tiny-gqa"), tokens, top, contrast=(top + 1) % 50
    )
    assert dla_folded.value == pytest.approx(dla_raw.value, abs=1e-4)
    assert abs(dla_folded.remainder) < 1e-4 and abs(dla_raw.remainder) < 1e-4


def test_every_compat_module_imports() -> None:
    for name in (
        "model",
        "names",
        "weights",
        "cache",
        "utils",
        "hook_points",
        "patching",
        "head_detector",
        "evals",
    ):
        module = importlib.import_module(f"mechlab.compat.{name}")
        assert re.search(r"\S", module.__doc__ or ""), name
