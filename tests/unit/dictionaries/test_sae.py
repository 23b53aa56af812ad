"""The SAE module: each architecture's encode against its formula, decoder-norm folding, bad inputs."""

import pytest
import torch

from mechlab.dictionaries import SAE, SAEConfig
from mechlab.dictionaries.architectures import jumprelu_train, sparse_decode, step_train, topk, topk_sparse
from mechlab.errors import InputError


def _sae(architecture: str, **extra: object) -> SAE:
    k = 3 if architecture == "topk" else None
    cfg = SAEConfig(d_in=6, d_sae=20, architecture=architecture, site="resid_post.1", k=k, **extra)  # type: ignore[arg-type]
    sae = SAE(cfg, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
        sae.b_dec.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    return sae


def test_topk_keeps_the_k_largest_relud_pre_activations() -> None:
    sae = _sae("topk", apply_b_dec_to_input=True)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    z = sae.encode(x)
    top = pre.topk(3, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    torch.testing.assert_close(z, expected)
    assert int((z != 0).sum(-1).max()) <= 3
    torch.testing.assert_close(sae(x), z @ sae.W_dec + sae.b_dec)


def test_jumprelu_zeroes_pre_activations_below_their_threshold() -> None:
    sae = _sae("jumprelu")
    with torch.no_grad():
        sae.threshold.copy_(torch.linspace(0.0, 0.1, 20))
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    pre = x @ sae.W_enc + sae.b_enc
    z = sae.encode(x)
    torch.testing.assert_close(z, pre * (pre > sae.threshold))
    assert 0 < int((z != 0).sum()) < int((pre > 0).sum())


def test_relu_sae_is_relu_of_the_affine_encoder() -> None:
    sae = _sae("relu")
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sae.encode(x), (x @ sae.W_enc + sae.b_enc).relu())


def test_normalize_decoder_gives_unit_rows_and_keeps_the_output() -> None:
    for architecture in ("relu", "jumprelu"):
        sae = _sae(architecture)
        x = torch.randn(7, 6, generator=torch.Generator().manual_seed(0))
        before = sae(x)
        sae.normalize_decoder()
        torch.testing.assert_close(sae.decoder_norms(), torch.ones(20))
        torch.testing.assert_close(sae(x), before, atol=1e-5, rtol=1e-5)


def test_expected_average_scaling_is_undone_on_the_way_out() -> None:
    plain = _sae("relu")
    scaled = SAE(plain.cfg.replace(normalize_activations="expected_average_only_in", norm_scaling_factor=2.0))
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled.encode(x), plain.encode(2 * x))
    torch.testing.assert_close(scaled(x), plain(2 * x) / 2)


def test_per_input_normalization_needs_the_input_to_decode() -> None:
    sae = _sae("relu", normalize_activations="constant_norm_rescale")
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    z = sae.encode(x)
    with pytest.raises(InputError, match="like=x"):
        sae.decode(z)
    scale = 6**0.5 / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(sae(x), (z @ sae.W_dec + sae.b_dec) / scale)


def test_jumprelu_threshold_gets_the_pseudo_derivative() -> None:
    pre = torch.tensor([[0.50, 0.52, 0.9], [0.45, 0.2, 0.56]], requires_grad=True)
    threshold = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    jumprelu_train(pre, threshold, 0.2).sum().backward()
    # K((pre - t) / 0.2) is 1 where |pre - t| < 0.1: entries (0,0) (0,1) (1,0) (1,2).
    assert threshold.grad is not None and pre.grad is not None
    torch.testing.assert_close(threshold.grad, torch.tensor([-2 * 0.5 / 0.2, -0.5 / 0.2, -0.5 / 0.2]))
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))
    threshold.grad = None
    step_train(pre, threshold, 0.2).sum().backward()
    torch.testing.assert_close(threshold.grad, torch.tensor([-2 / 0.2, -1 / 0.2, -1 / 0.2]))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"architecture": "gated"}, "architecture must be one of"),
        ({"k": None}, "needs k"),
        ({"k": 99}, "needs k"),
        ({"architecture": "relu", "k": 3}, "takes k=None"),
        ({"site": "resid_post"}, "is not a site"),
        ({"normalize_activations": "always"}, "normalize_activations must be"),
        ({"d_sae": 0}, "positive integer"),
        ({"dtype": "int8"}, "dtype must be"),
        ({"d_out": 4, "apply_b_dec_to_input": True}, "needs d_out == d_in"),
    ],
)
def test_bad_configs_are_refused(changes: dict[str, object], match: str) -> None:
    base = {"d_in": 6, "d_sae": 20, "architecture": "topk", "site": "resid_post.1", "k": 3}
    with pytest.raises(ValueError, match=match):
        SAEConfig(**{**base, **changes})  # type: ignore[arg-type]


def test_wrong_width_input_is_refused_with_the_site_named() -> None:
    sae = _sae("relu")
    with pytest.raises(InputError, match=r"resid_post.1 activations of width d_in=6; got shape \(2, 5\)"):
        sae.encode(torch.zeros(2, 5))


def test_sparse_topk_decode_equals_the_dense_product_forward_and_backward() -> None:
    torch.manual_seed(0)
    pre = torch.randn(64, 96)
    pre[:4] = -pre[:4].abs()  # rows whose top k are all negative: ReLU'd to 0
    W_dec = torch.randn(96, 24, requires_grad=True)
    dense = topk(pre, 8) @ W_dec
    grad = torch.randn_like(dense)
    (dense_grad,) = torch.autograd.grad(dense, W_dec, grad)
    values, indices = topk_sparse(pre, 8)
    sparse = sparse_decode(values, indices, W_dec)
    (sparse_grad,) = torch.autograd.grad(sparse, W_dec, grad)
    assert torch.allclose(sparse, dense, atol=1e-5)
    assert torch.allclose(sparse_grad, dense_grad, atol=1e-5)
    assert (values[:4] == 0).all() and (values[4:] > 0).all() and indices.shape == (64, 8)
