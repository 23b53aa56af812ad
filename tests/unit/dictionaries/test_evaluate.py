"""Evaluation: a lossless SAE explains all variance and recovers all the loss; a blank one none."""

import pytest
import torch

import mechlab
from mechlab.dictionaries import SAE, SAEConfig
from mechlab.dictionaries.evaluate import evaluate_sae


def _lossless(d: int, site: str) -> SAE:
    """``z = [relu(x), relu(-x)]``, ``x̂ = relu(x) - relu(-x) = x``: exact, and every latent used."""
    sae = SAE(SAEConfig(d, 2 * d, "relu", site))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return mechlab.load_model("toy:tiny").model


def _tokens(model) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.randint(0, int(model.cfg.d_vocab), (6, 10), generator=torch.Generator().manual_seed(0))


def test_a_lossless_sae_scores_perfectly(model) -> None:  # type: ignore[no-untyped-def]
    d = int(model.cfg.d_model)
    result = evaluate_sae(
        model, _lossless(d, "resid_post.0"), tokens=_tokens(model), batch_size=4, outlier_ratio=None
    )
    assert result.fve == pytest.approx(1.0, abs=1e-5)
    assert result.ce_sae == pytest.approx(result.ce_clean, abs=1e-4)
    assert result.loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert result.ce_zero != pytest.approx(result.ce_clean, abs=1e-3)
    assert result.n_tokens == 6 * 9 and result.dead_fraction == 0.0
    assert result.l0 == pytest.approx(d, abs=0.5)  # one of each ± pair fires per coordinate


def test_a_blank_sae_recovers_nothing(model) -> None:  # type: ignore[no-untyped-def]
    d = int(model.cfg.d_model)
    sae = _lossless(d, "resid_post.0")
    with torch.no_grad():
        sae.W_dec.zero_()
    result = evaluate_sae(model, sae, tokens=_tokens(model), batch_size=4)
    assert result.ce_sae == pytest.approx(result.ce_zero, abs=1e-5)
    assert result.loss_recovered == pytest.approx(0.0, abs=1e-4)
    assert result.fve < 0.0


def test_a_lossless_sae_on_a_per_head_site(model) -> None:  # type: ignore[no-untyped-def]
    # z.1 flattened is (head d_head); writing it back to itself through the SAE changes nothing.
    width = int(model.cfg.n_heads * model.cfg.d_head)
    result = evaluate_sae(model, _lossless(width, "z.1"), tokens=_tokens(model), batch_size=3)
    assert result.fve == pytest.approx(1.0, abs=1e-5) and result.loss_recovered == pytest.approx(
        1.0, abs=1e-3
    )
    assert "loss recovered 1.0" in result.summary()
