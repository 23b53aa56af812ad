"""Weight-based detectors: normalization folding, grouped-query mapping, copying-score invariants."""

import pytest
import torch
from transformer_lens import FactoredMatrix

import mechlab
from mechlab.detectors.composition import composition_score
from mechlab.detectors.copying import CopyingDetector, copying_score, folded_vocab, ov_eigenvalues
from mechlab.detectors.weights import folded_head_weights


def _parameters(model: object) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gqa", "tiny_llama"])
def test_folded_head_weights(fixture: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(fixture).model
    before = _parameters(model)
    heads = folded_head_weights(model)
    scale = torch.stack([block.ln1.w.detach().float() for block in model.blocks])[:, None, :, None]
    torch.testing.assert_close(heads.W_Q, model.W_Q.float() * scale)
    torch.testing.assert_close(heads.W_V, model.W_V.float() * scale)
    layernorm = str(model.cfg.normalization_type).upper() == "LN"
    # LayerNorm removes the mean over d_model from what it reads, so W_O's mean there is dropped;
    # RMSNorm reads it, so W_O stays as it is.
    w_o = model.W_O.float()
    expected = w_o - w_o.mean(-1, keepdim=True) if layernorm else w_o
    torch.testing.assert_close(heads.W_O, expected)
    if layernorm:
        assert heads.W_O.sum(-1).abs().max() < 1e-5
    after = _parameters(model)
    assert all(torch.equal(before[name], after[name]) for name in before)  # the model is untouched


@pytest.mark.parametrize("fixture", ["tiny_gqa", "tiny_llama"])
def test_query_heads_read_their_key_value_heads(fixture: str, request: pytest.FixtureRequest) -> None:
    """Against weights expanded explicitly as Llama's repeat_kv does (query head h reads kv head
    h // (n_heads / n_kv_heads))."""
    model = request.getfixturevalue(fixture).model
    heads = folded_head_weights(model)
    group = int(model.cfg.n_heads) // int(model.W_V.shape[1])
    assert group == 2 and heads.kv.tolist() == [0, 0, 1, 1]
    expanded_v = heads.W_V.repeat_interleave(group, dim=1)
    expanded_k = heads.W_K.repeat_interleave(group, dim=1)
    torch.testing.assert_close(heads.per_query_head(heads.W_V), expanded_v)
    for src, dst in (((0, 1), (1, 2)), ((0, 3), (1, 0))):
        ov = FactoredMatrix(expanded_v[src], heads.W_O[src])
        qk = FactoredMatrix(heads.W_Q[dst], expanded_k[dst].T)
        by_hand = float((ov @ qk.T).norm() / (ov.norm() * qk.norm()))
        assert composition_score(model, src, dst, "k") == pytest.approx(by_hand, rel=1e-5)
    w_e, w_u = folded_vocab(model)
    by_hand_copying = copying_score(ov_eigenvalues(heads.W_O, w_u @ w_e, expanded_v))
    torch.testing.assert_close(CopyingDetector().weight_scores(model), by_hand_copying)


def test_copying_scores_ignore_what_carries_no_copying() -> None:
    """A vector added to every embedding, a logit added to every token (a vector added to every
    unembedding column) and positive rescaling of ln1 and ln_final change no copying score."""
    model = mechlab.load_model("toy:tiny").model  # a fresh copy: this test edits its weights
    detector = CopyingDetector()
    reference = detector.weight_scores(model)
    generator = torch.Generator().manual_seed(0)
    d_model = int(model.cfg.d_model)
    with torch.no_grad():
        model.W_E.add_(3 * torch.randn(d_model, generator=generator))
        torch.testing.assert_close(detector.weight_scores(model), reference, atol=1e-5, rtol=1e-4)
        model.W_U.add_(3 * torch.randn(d_model, 1, generator=generator))
        torch.testing.assert_close(detector.weight_scores(model), reference, atol=1e-5, rtol=1e-4)
        for block, factor in zip(model.blocks, (3.0, 0.2), strict=True):
            block.ln1.w.mul_(factor)
        model.ln_final.w.mul_(0.5)
        torch.testing.assert_close(detector.weight_scores(model), reference, atol=1e-5, rtol=1e-4)
        model.W_E.mul_(-1.0)  # a sign flip turns copying into suppression: the check can fail
        torch.testing.assert_close(detector.weight_scores(model), -reference, atol=1e-5, rtol=1e-4)
