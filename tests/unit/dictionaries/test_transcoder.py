"""Transcoders: training on a toy model, evaluation, and the three file layouts."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mechlab
from mechlab.dictionaries import SAEConfig
from mechlab.dictionaries.harvest import TensorBuffer
from mechlab.dictionaries.train import train_sae_on
from mechlab.dictionaries.train_config import TrainConfig
from mechlab.dictionaries.transcoder import Transcoder, load_transcoder, load_transcoders, transcoder_config
from mechlab.dictionaries.transcoder_train import evaluate_transcoders, train_transcoders
from mechlab.errors import InputError


def _tc(seed: int = 0, *, skip: bool = True) -> Transcoder:
    tc = Transcoder(transcoder_config(8, 1, 16, architecture="relu", k=None), skip=skip, seed=seed)
    with torch.no_grad():
        if tc.W_skip is not None:
            tc.W_skip.copy_(torch.randn(8, 8, generator=torch.Generator().manual_seed(seed)))
        tc.b_enc.fill_(0.05)
    return tc


def test_forward_adds_the_skip_connection() -> None:
    tc = _tc()
    x = torch.randn(3, 8)
    assert tc.W_skip is not None
    torch.testing.assert_close(tc(x), tc.decode(tc.encode(x)) + x @ tc.W_skip)
    with pytest.raises(InputError, match="site_out=None"):
        Transcoder(transcoder_config(8, 1, 16, k=4).replace(site_out=None, d_out=None))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    tc = _tc()
    tc.save(tmp_path / "layer_1")
    back = load_transcoder(tmp_path / "layer_1")
    x = torch.randn(4, 8)
    torch.testing.assert_close(back(x), tc(x))
    assert back.layer == 1 and back.cfg.site_out == "mlp_out.1"
    assert list(load_transcoders(tmp_path)) == [1]


def test_reads_circuit_tracer_and_gemma_scope_2_files(tmp_path: Path) -> None:
    tc = _tc(seed=2)
    x = torch.randn(5, 8)
    assert tc.W_skip is not None
    # circuit-tracer's ReLU layout: W_enc [d_sae, d_model], W_dec [d_sae, d_model], x @ W_skip.T
    save_file(
        {
            "W_enc": tc.W_enc.detach().T.contiguous(),
            "W_dec": tc.W_dec.detach().clone(),
            "b_enc": tc.b_enc.detach(),
            "b_dec": tc.b_dec.detach(),
            "W_skip": tc.W_skip.detach().T.contiguous(),
        },
        str(tmp_path / "layer_1.safetensors"),
    )
    ct = load_transcoder(tmp_path / "layer_1.safetensors")
    torch.testing.assert_close(ct(x), tc(x))
    # Gemma Scope 2: params.safetensors with lower-case names, JumpReLU threshold, x @ w_skip
    gemma = tmp_path / "gs" / "layer_1"
    gemma.mkdir(parents=True)
    threshold = torch.full((16,), 0.02)
    save_file(
        {
            "w_enc": tc.W_enc.detach(),
            "w_dec": tc.W_dec.detach(),
            "b_enc": tc.b_enc.detach(),
            "b_dec": tc.b_dec.detach(),
            "threshold": threshold,
            "w_skip": tc.W_skip.detach(),
        },
        str(gemma / "params.safetensors"),
    )
    gs = load_transcoder(gemma)
    pre = tc.pre_activation(x)
    expected = tc.decode(torch.where(pre > threshold, pre, 0.0)) + x @ tc.W_skip
    torch.testing.assert_close(gs(x), expected)
    assert gs.cfg.architecture == "jumprelu" and gs.layer == 1
    unnamed = tmp_path / "weights"
    unnamed.mkdir()
    (unnamed / "params.safetensors").write_bytes((gemma / "params.safetensors").read_bytes())
    with pytest.raises(InputError, match="layer_N"):
        load_transcoder(unnamed)  # Gemma Scope 2 files do not say their layer
    assert load_transcoder(unnamed, layer=1).layer == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no transcoders"):
        load_transcoders(tmp_path / "empty")


def test_training_explains_the_mlp_output() -> None:
    model = mechlab.load_model("toy:tiny").model
    tokens = torch.randint(0, 50, (256, 16), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        architecture="topk",
        d_sae=128,
        k=16,
        n_tokens=40_000,
        batch_size=256,
        lr=3e-3,
        buffer_rows=4096,
        context=16,
        dead_after_tokens=10_000,
    )
    transcoders = train_transcoders(model, tokens, config)
    held = torch.randint(0, 50, (16, 16), generator=torch.Generator().manual_seed(1))
    result = evaluate_transcoders(model, transcoders, held)
    untrained = evaluate_transcoders(
        model, {layer: Transcoder(transcoder_config(32, layer, 128, k=16)) for layer in (0, 1)}, held
    )
    assert all(result.fve[layer] > 0.5 for layer in (0, 1)), result.summary()
    assert all(untrained.fve[layer] < 0.2 for layer in (0, 1))
    assert all(10 < result.l0[layer] <= 16 for layer in (0, 1))
    assert abs(result.ce_replaced - result.ce_clean) < abs(untrained.ce_replaced - result.ce_clean)


TINY = TrainConfig(
    architecture="topk", d_sae=64, k=8, n_tokens=2048, batch_size=256, buffer_rows=4096, context=16
)


def test_layer_groups_and_resume_give_the_same_transcoders(tmp_path: Path) -> None:
    model = mechlab.load_model("toy:tiny").model
    tokens = torch.randint(0, 50, (64, 16), generator=torch.Generator().manual_seed(0))
    config = TINY
    together = train_transcoders(model, tokens, config)
    one_row_bytes = 64 * 15 * 2 * 32 * 2  # rows × [mlp_in, mlp_out] × d_model × float16: one layer
    apart = train_transcoders(model, tokens, config, max_bytes=one_row_bytes, out_dir=tmp_path)
    for layer in (0, 1):
        assert torch.equal(together[layer].W_enc, apart[layer].W_enc)
    (tmp_path / "layer_1" / "cfg.json").unlink()  # layer 1 interrupted: retrained, layer 0 loaded
    resumed = train_transcoders(model, tokens, config, out_dir=tmp_path)
    for layer in (0, 1):
        assert torch.allclose(resumed[layer].W_dec, together[layer].W_dec)
    with pytest.raises(InputError, match="other than the one asked for"):
        train_transcoders(model, tokens, config.replace(d_sae=32), out_dir=tmp_path)


def _linear_rows(n: int = 8192, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[x, y]`` rows whose output is a dense linear map of the input (``a``), plus ``a``."""
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, d, generator=g)
    a = torch.randn(d, d, generator=g) / 4
    return torch.cat([x, x @ a], dim=-1), a


def test_a_skip_connection_learns_the_dense_linear_part_the_sparse_code_cannot() -> None:
    rows, a = _linear_rows()
    config = TrainConfig(
        architecture="topk", d_sae=32, k=2, n_tokens=256 * 400, batch_size=256, buffer_rows=4096, lr=1e-2
    )
    cfg = transcoder_config(16, 0, 32, architecture="topk", k=2)
    x, y = rows[:1024, :16], rows[:1024, 16:]

    def fve(tc: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(1 - (tc(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())

    with_skip = train_sae_on(TensorBuffer(rows, seed=0), cfg, config.replace(skip=True))
    without = train_sae_on(TensorBuffer(rows, seed=0), cfg, config)
    assert isinstance(with_skip, Transcoder) and with_skip.W_skip is not None
    assert without.__class__ is not Transcoder
    # on raw rows (the training scales folded in): near-exact with the skip, poor with 2 latents alone
    assert fve(with_skip) > 0.999 and fve(without) < 0.8
    # the skip carries most of the map (the sparse code takes a little of it: 0.15 measured)
    assert float((with_skip.W_skip.detach() - a).norm() / a.norm()) < 0.3


def test_skip_transcoders_save_load_resume_and_refuse_a_skipless_recipe(tmp_path: Path) -> None:
    model = mechlab.load_model("toy:tiny").model
    tokens = torch.randint(0, 50, (64, 16), generator=torch.Generator().manual_seed(0))
    config = TINY.replace(skip=True)
    trained = train_transcoders(model, tokens, config, out_dir=tmp_path)
    loaded = load_transcoders(tmp_path)
    for layer in (0, 1):
        assert trained[layer].W_skip is not None and bool(trained[layer].W_skip.abs().sum() > 0)
        assert torch.equal(trained[layer].W_skip, loaded[layer].W_skip)
    with pytest.raises(InputError, match="skip=True"):
        train_transcoders(model, tokens, config.replace(skip=False), out_dir=tmp_path)
    with pytest.raises(InputError, match="trains a transcoder's skip connection"):
        train_sae_on(
            TensorBuffer(torch.zeros(512, 8)),
            SAEConfig(8, 16, "topk", "resid_post.0", k=2),
            config.replace(d_sae=16, k=2),
        )
