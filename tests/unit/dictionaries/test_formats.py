"""SAE directories: mechlab's own round trip, and SAELens / Gemma Scope directories written by hand
(their field and tensor names, their conventions) giving the activations their formulas give."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mechlab.dictionaries import SAE, SAEConfig, load_sae
from mechlab.dictionaries.formats import site_of_hook
from mechlab.errors import InputError

D_IN, D_SAE = 6, 16


def _weights(seed: int = 0, *, threshold: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
    }
    if threshold:
        out["threshold"] = torch.rand(D_SAE, generator=g)
    return out


def _x() -> torch.Tensor:
    return torch.randn(2, 3, D_IN, generator=torch.Generator().manual_seed(9))


def test_save_and_load_round_trip_every_architecture(tmp_path: Path) -> None:
    for architecture, k in (("topk", 4), ("jumprelu", None), ("relu", None)):
        cfg = SAEConfig(
            D_IN, D_SAE, architecture, "mlp_out.2", k=k, apply_b_dec_to_input=True, model_name="toy"
        )
        sae = SAE(cfg, seed=5)
        with torch.no_grad():
            sae.b_dec.add_(1.0)
        sae.save(tmp_path / architecture)
        loaded = load_sae(tmp_path / architecture)
        assert loaded.cfg == cfg
        assert torch.equal(loaded.encode(_x()), sae.encode(_x()))
        assert torch.equal(loaded(_x()), sae(_x()))


def test_saved_cfg_json_speaks_saelens(tmp_path: Path) -> None:
    SAE(SAEConfig(D_IN, D_SAE, "relu", "resid_post.3")).save(tmp_path)
    raw = json.loads((tmp_path / "cfg.json").read_text())
    assert raw["architecture"] == "standard"
    assert raw["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert sorted(json.loads(json.dumps(list(_saved_keys(tmp_path))))) == ["W_dec", "W_enc", "b_dec", "b_enc"]


def _saved_keys(directory: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(directory / "sae_weights.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_a_saelens_6_topk_directory_loads(tmp_path: Path) -> None:
    w = _weights()
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    cfg = {
        "architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "k": 3, "rescale_acts_by_decoder_norm": False,
        "metadata": {"model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre",
                     "sae_lens_version": "6.5.0"},
    }  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    assert (sae.cfg.site, sae.cfg.k, sae.cfg.model_name) == ("resid_pre.8", 3, "gpt2")
    pre = (_x() - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = pre.topk(3, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    torch.testing.assert_close(sae.encode(_x()), expected)
    torch.testing.assert_close(sae(_x()), expected @ w["W_dec"] + w["b_dec"])


def test_a_pre_6_saelens_relu_directory_loads_with_its_defaults(tmp_path: Path) -> None:
    w = _weights(1)
    save_file({**w, "scaling_factor": torch.ones(D_SAE)}, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.4.hook_mlp_out", "model_name": "pythia-70m",
           "activation_fn_str": "relu", "normalize_activations": False, "dtype": "torch.float32"}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    # Missing apply_b_dec_to_input means true in SAELens.
    assert (sae.cfg.architecture, sae.cfg.site, sae.cfg.apply_b_dec_to_input) == ("relu", "mlp_out.4", True)
    expected = ((_x() - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu()
    torch.testing.assert_close(sae.encode(_x()), expected)


def test_a_pre_6_topk_directory_gives_k_through_activation_fn_kwargs(tmp_path: Path) -> None:
    save_file(_weights(), str(tmp_path / "sae_weights.safetensors"))
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.0.hook_resid_post", "architecture": "standard",
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    assert (sae.cfg.architecture, sae.cfg.k) == ("topk", 5)
    assert int((sae.encode(_x()) != 0).sum(-1).max()) <= 5


def test_a_saelens_jumprelu_directory_loads_its_threshold(tmp_path: Path) -> None:
    w = _weights(2, threshold=True)
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": False,
           "normalize_activations": "none", "metadata": {"hook_name": "blocks.2.hook_resid_post",
                                                          "sae_lens_version": "6.0.0"}}  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    pre = _x() @ w["W_enc"] + w["b_enc"]
    torch.testing.assert_close(sae.encode(_x()), pre.relu() * (pre > w["threshold"]))


def test_a_gemma_scope_2_directory_loads_with_a_site_given(tmp_path: Path) -> None:
    w = _weights(3, threshold=True)
    save_file({k.replace("W_", "w_"): v for k, v in w.items()}, str(tmp_path / "params.safetensors"))
    with pytest.raises(InputError, match="site="):
        load_sae(tmp_path)
    sae = load_sae(tmp_path, site="resid_post.6")
    assert (sae.cfg.architecture, sae.cfg.apply_b_dec_to_input) == ("jumprelu", False)
    pre = _x() @ w["W_enc"] + w["b_enc"]
    z = pre * (pre > w["threshold"])
    torch.testing.assert_close(sae.encode(_x()), z)
    torch.testing.assert_close(sae(_x()), z @ w["W_dec"] + w["b_dec"])
    (tmp_path / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.9.output"}))
    assert load_sae(tmp_path).cfg.site == "resid_post.9"


def test_a_gemma_scope_npz_directory_loads(tmp_path: Path) -> None:
    w = _weights(4, threshold=True)
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in w.items()})
    sae = load_sae(tmp_path, site="mlp_out.3")
    pre = _x() @ w["W_enc"] + w["b_enc"]
    torch.testing.assert_close(sae.encode(_x()), pre * (pre > w["threshold"]))


def test_hook_names_map_to_sites() -> None:
    assert site_of_hook("blocks.5.attn.hook_z") == "z.5"
    assert site_of_hook("blocks.11.hook_resid_mid") == "resid_mid.11"
    assert site_of_hook("hook_embed") == "embed"
    with pytest.raises(InputError, match="Pass site="):
        site_of_hook("encoder.layer.3")


def test_bad_directories_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_sae(tmp_path / "absent")
    with pytest.raises(InputError, match="holds no SAE"):
        load_sae(tmp_path)
    w = _weights()
    save_file({**w, "W_dec": w["W_dec"][:, :4].contiguous()}, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "hook_name": "blocks.0.hook_resid_post"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match=r"W_dec has shape \(16, 4\); its config implies \(16, 6\)"):
        load_sae(tmp_path)
    save_file({**w, "b_enc": torch.full((D_SAE,), float("nan"))}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(InputError, match="NaN"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(InputError, match="'gated' is not supported"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(InputError, match="as JSON"):
        load_sae(tmp_path)
