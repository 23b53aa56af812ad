"""Choosing a verification reference: unknown names and a missing llama-cpp-python are clear errors;
the per-layer comparison's arithmetic."""

import numpy as np
import pytest
import torch

import mechlab
from mechlab.models.references import llamacpp
from mechlab.models.verify import _Tally


def test_an_unknown_reference_is_refused() -> None:
    with pytest.raises(mechlab.InputError, match="Unknown reference 'ollama'"):
        mechlab.verify("toy:tiny", reference="ollama")


def test_without_llama_cpp_python_the_error_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setattr(llamacpp, "available", lambda: None)
    with pytest.raises(mechlab.InputError, match=r"make install-llamacpp.*--reference transformers"):
        mechlab.verify("toy:tiny", reference="llamacpp")


def test_layer_by_layer_comparison_needs_llama_cpp() -> None:
    with pytest.raises(
        mechlab.InputError, match=r"reference='llamacpp' \(command line: --reference llamacpp --layers\)"
    ):
        mechlab.verify("toy:tiny", layers=True)


def test_per_layer_relative_errors_and_where_they_first_exceed_the_tolerance() -> None:
    tally = _Tally()
    ref = np.ones((3, 4))
    for layer, scale in enumerate((1.01, 1.02, 1.2, 1.01)):
        ours = {("resid_post", layer): torch.full((3, 4), scale, dtype=torch.float64)}
        tally.add_layers(ours, {("resid_post", layer): ref, ("attn_out", layer): ref})  # no attn_out of ours
    rows = tally.layer_rows(n_layers=5)
    assert [row.layer for row in rows] == [0, 1, 2, 3]
    assert [round(row.errors["resid_post"] or 0, 6) for row in rows] == [0.01, 0.02, 0.2, 0.01]
    assert rows[0].errors["attn_out"] is None and rows[0].errors["mlp_out"] is None
    assert [row.diverges for row in rows] == [False, False, True, False]


def test_unnamed_kinds_are_read_off_the_residual_stream() -> None:
    """Gemma 2 names its post-MLP norm without a layer, Qwen2 names no attention output: the MLP
    output is l_out - ffn_inp, the attention output ffn_inp minus the previous block's l_out."""
    rng = np.random.default_rng(0)
    pre, mid, post = (rng.normal(size=(3, 4)) for _ in range(3))
    named = {("resid_post", 0): pre, ("resid_mid", 1): mid, ("resid_post", 1): post}
    named["mlp_out", 1] = rng.normal(size=(3, 4))  # a pre-norm ffn_out, not what the block adds
    completed = llamacpp._complete(named)
    np.testing.assert_array_equal(completed["mlp_out", 1], post - mid)
    np.testing.assert_array_equal(completed["attn_out", 1], mid - pre)
    assert ("attn_out", 0) not in completed  # no block before layer 0
