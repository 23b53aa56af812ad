"""SmolLM2 in every loading mode: the same hook names, and each method's numbers within the mode's
tolerance of float32 (quantized mode reads the same blocks the float32 copy was dequantized from: with
float products, and in gradient methods, the same float arithmetic; with llama.cpp's, its 8-bit
activations)."""

import pytest
import torch

import mechlab
from mechlab import LogitDiff
from mechlab.models.quantized import QuantizedLinear, kernels
from mechlab.report.settings import ExplainSettings

CLEAN = "When Mary and John went to the store after work on Friday, John gave a bottle of milk to"
CORRUPTED = "When Mary and John went to the store after work on Friday, Tom gave a bottle of milk to"
EIFFEL = "The Eiffel Tower is located in the city of"


@pytest.fixture(scope="module")
def quantized() -> mechlab.LoadedModel:
    return mechlab.load_model("smollm2", weights="quantized")


@pytest.fixture(scope="module")
def bfloat16() -> mechlab.LoadedModel:
    return mechlab.load_model("smollm2", weights="bfloat16")


def test_modes_share_hook_names_and_logits(smollm2, quantized, bfloat16) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(quantized.model.blocks[5].mlp.out.original_component, QuantizedLinear)
    tokens = smollm2.model.to_tokens(EIFFEL)
    with torch.no_grad():
        reference, reference_cache = smollm2.model.run_with_cache(tokens)
        with kernels("float"):
            found, cache = quantized.model.run_with_cache(tokens)
        native = quantized.model(tokens)
        half = bfloat16.model(tokens)
    # llama.cpp's kernels round the activations to 8 bits: close to float32, not equal.
    log_p, log_q = reference.log_softmax(-1), native.log_softmax(-1)
    assert 0 < float((log_p.exp() * (log_p - log_q)).sum(-1).mean()) < 0.01
    assert list(cache.keys()) == list(reference_cache.keys())
    assert (found - reference).abs().max() < 1e-3  # the same weights, in another order of float ops
    assert (half.float() - reference).abs().max() < 1.0  # bfloat16's 8-bit mantissa
    assert int(found[0, -1].argmax()) == int(reference[0, -1].argmax()) == int(half[0, -1].argmax())
    torch.testing.assert_close(
        cache["blocks.20.hook_resid_post"], reference_cache["blocks.20.hook_resid_post"], atol=1e-3, rtol=0
    )


@pytest.mark.slow
def test_patching_and_attribution_patching_agree_with_float32(smollm2, quantized) -> None:  # type: ignore[no-untyped-def]
    results = {}
    for name, loaded in (("float32", smollm2), ("quantized", quantized)):
        model = loaded.model
        clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
        metric = LogitDiff.from_text(model, " Mary", " John")
        sites = [mechlab.Site("z", 23, head) for head in range(9)]
        results[name] = (
            mechlab.patch(model, clean, corrupted, sites, metric),
            mechlab.attribution_patch(model, clean, corrupted, "z", metric),
        )
    (patched, atp), (patched_q, atp_q) = results["float32"], results["quantized"]
    torch.testing.assert_close(
        patched_q.normalized, patched.normalized, atol=0.05, rtol=0
    )  # llama.cpp's kernels
    torch.testing.assert_close(atp_q.values, atp.values, atol=2e-3, rtol=0)  # exact gradients: float products
    assert patched_q.top(1)[0].label == "z.23.3"
    assert atp_q.top(1)[0].label == "z.23.3"


@pytest.mark.slow
def test_integrated_gradients_are_complete_in_quantized_mode(quantized) -> None:  # type: ignore[no-untyped-def]
    model = quantized.model
    result = mechlab.integrated_gradients(model, EIFFEL, mechlab.make_target(model, " Paris"), steps=32)
    assert result.completeness_error is not None and result.completeness_error < 0.02
    assert torch.isfinite(result.scores).all()


@pytest.mark.slow
def test_detectors_and_explain_run_in_quantized_mode(smollm2, quantized) -> None:  # type: ignore[no-untyped-def]
    expected = mechlab.run_detectors(smollm2.model, ["induction"], n_samples=4)["induction"].top(3)
    found = mechlab.run_detectors(quantized.model, ["induction"], n_samples=4)["induction"].top(3)
    assert [h.label for h in found] == [h.label for h in expected]
    assert [h.score for h in found] == pytest.approx([h.score for h in expected], abs=0.02)
    settings = ExplainSettings(max_new_tokens=2, detectors=("induction",), detector_samples=2, top_heads=2)
    explanation = mechlab.explain(quantized, EIFFEL, settings=settings)
    assert explanation.chosen_text == " Paris"
