import pytest
import torch

from mechlab import HookError, Site, SiteError, active_hook_count, hooked


def test_hook_replaces_activation_and_is_removed(tiny, tokens) -> None:
    model = tiny.model
    clean = model(tokens)
    with hooked(model, {Site("resid_pre", 1): lambda act, site: torch.zeros_like(act)}):
        assert active_hook_count(model) == 1
        ablated = model(tokens)
    assert active_hook_count(model) == 0
    assert not torch.allclose(clean, ablated)
    assert torch.equal(model(tokens), clean)


def test_exception_in_hook_is_named_and_hooks_removed(tiny, tokens) -> None:
    model = tiny.model

    def broken(act: torch.Tensor, site: Site) -> torch.Tensor:
        raise ValueError("boom")

    with pytest.raises(HookError, match=r"hook at z\.1 \(blocks\.1\.attn\.hook_z\) raised ValueError: boom"):
        with hooked(model, {Site("z", 0): lambda a, s: None, Site("z", 1): broken}):
            model(tokens)
    assert active_hook_count(model) == 0


def test_exception_in_body_removes_hooks(tiny, tokens) -> None:
    model = tiny.model
    with pytest.raises(KeyError):
        with hooked(model, {Site("z", 0): lambda a, s: None}):
            raise KeyError("user code failed")
    assert active_hook_count(model) == 0


def test_bad_site_attaches_nothing(tiny) -> None:
    model = tiny.model
    with pytest.raises(SiteError):
        with hooked(model, [(Site("z", 0), lambda a, s: None), (Site("z", 7), lambda a, s: None)]):
            pass
    assert active_hook_count(model) == 0


def test_backward_hook_sees_gradient(tiny, tokens) -> None:
    model = tiny.model
    grads = {}

    def keep(grad: torch.Tensor, site: Site) -> None:
        grads[site] = grad.detach().clone()

    with hooked(model, backward={Site("resid_post", 0): keep}):
        model(tokens)[:, -1, 0].sum().backward()
    model.zero_grad(set_to_none=True)
    grad = grads[Site("resid_post", 0)]
    assert grad.shape == (2, 12, 32)
    assert grad[:, -1].abs().sum() > 0
    assert active_hook_count(model) == 0
