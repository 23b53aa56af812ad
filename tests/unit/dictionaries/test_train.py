"""Training: a superposition toy with planted features is recovered; an interrupted run resumes to
the same weights bit for bit; the learning-rate schedule; bad settings are refused."""

from pathlib import Path

import pytest
import torch

import mechlab
from mechlab.dictionaries import SAEConfig
from mechlab.dictionaries.harvest import ActivationBuffer, TensorBuffer
from mechlab.dictionaries.train import train_sae, train_sae_on
from mechlab.dictionaries.train_config import TrainConfig, TrainProgress, lr_factor
from mechlab.errors import InputError
from mechlab.shards import read_capture
from mechlab.sites import Site


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    """These matrices are small: one thread is ~10x faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def superposition(n_features: int = 64, d: int = 32, n: int = 20_000, p: float = 0.04, seed: int = 0):  # type: ignore[no-untyped-def]
    """``n`` points, each a sparse non-negative mix of ``n_features`` unit directions in ``d`` dims."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n_features, d, generator=g)
    features = features / features.norm(dim=-1, keepdim=True)
    on = (torch.rand(n, n_features, generator=g) < p).float()
    magnitude = torch.rand(n, n_features, generator=g) + 0.5
    return (on * magnitude) @ features, features


def _recovered(sae: mechlab.SAE, features: torch.Tensor) -> float:
    directions = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    best = (features @ directions.T).max(dim=1).values
    return float((best >= 0.9).float().mean())


TOY = {
    "d_sae": 128,
    "n_tokens": 120_000,
    "batch_size": 256,
    "lr": 3e-3,
    "buffer_rows": 1024,
    "dead_after_tokens": 20_000,
}


@pytest.mark.parametrize(
    ("architecture", "extra", "at_least"),
    [
        ("topk", {"k": 4}, 0.9),
        ("relu", {"k": None, "l1_coefficient": 1.0}, 0.9),
        # Its L0 comes out at 2.5, the planted mean of 2.56 active features per point.
        ("jumprelu", {"k": None, "l0_coefficient": 3.0, "init_threshold": 0.5, "n_tokens": 250_000}, 0.9),
    ],
)
def test_training_recovers_planted_features(
    architecture: str, extra: dict[str, object], at_least: float
) -> None:
    data, features = superposition()
    config = TrainConfig(architecture=architecture, **{**TOY, **extra})  # type: ignore[arg-type]
    cfg = SAEConfig(32, 128, architecture, "resid_post.0", k=config.k if architecture == "topk" else None)
    sae = train_sae_on(TensorBuffer(data), cfg, config)
    assert _recovered(sae, features) >= at_least
    fve = 1 - (sae(data) - data).pow(2).sum() / (data - data.mean(0)).pow(2).sum()
    assert fve > 0.75
    if architecture == "topk":
        assert float((sae.encode(data) > 0).sum(-1).float().max()) <= 4


def test_an_untrained_sae_recovers_few_features() -> None:
    _, features = superposition()
    assert _recovered(mechlab.SAE(SAEConfig(32, 128, "topk", "resid_post.0", k=4)), features) < 0.1


def test_an_interrupted_run_resumes_to_bit_identical_weights(tmp_path: Path) -> None:
    data, _ = superposition(n=4000)
    config = TrainConfig(**{**TOY, "k": 4, "n_tokens": 256 * 12, "checkpoint_every": 5})  # type: ignore[arg-type]
    cfg = SAEConfig(32, 128, "topk", "resid_post.0", k=4)
    straight = train_sae_on(TensorBuffer(data, seed=3), cfg, config)

    def stop_at_7(state: TrainProgress) -> None:
        if state.done == 7:  # two steps after the checkpoint at step 5: they are redone
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae_on(TensorBuffer(data, seed=3), cfg, config, checkpoint_dir=tmp_path, progress=stop_at_7)
    # a checkpoint written before a setting existed (here ``skip``) resumes: the setting is its default
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    del state["train_config"]["skip"]
    torch.save(state, tmp_path / "state.pt")
    steps: list[int] = []
    resumed = train_sae_on(
        TensorBuffer(data, seed=3),
        cfg,
        config,
        checkpoint_dir=tmp_path,
        progress=lambda s: steps.append(s.done),
    )
    assert steps[0] == 6 and steps[-1] == 12
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    with pytest.raises(InputError, match="different SAE or training configuration"):
        train_sae_on(TensorBuffer(data, seed=3), cfg, config.replace(lr=1e-3), checkpoint_dir=tmp_path)


def test_streaming_from_a_model_resumes_bit_identically(tmp_path: Path) -> None:
    model = mechlab.load_model("toy:tiny").model
    tokens = torch.randint(0, int(model.cfg.d_vocab), (40, 12), generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        d_sae=32,
        k=4,
        n_tokens=64 * 8,
        batch_size=64,
        buffer_rows=256,
        context=12,
        model_batch=8,
        checkpoint_every=3,
    )
    straight = train_sae(model, "resid_post.1", config, tokens=tokens)

    def stop(state: TrainProgress) -> None:
        if state.done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sae(model, "resid_post.1", config, tokens=tokens, checkpoint_dir=tmp_path, progress=stop)
    resumed = train_sae(
        model, "resid_post.1", config, tokens=tokens, checkpoint_dir=tmp_path, out_dir=tmp_path / "sae"
    )
    assert torch.equal(straight.W_dec, resumed.W_dec) and torch.equal(straight.b_enc, resumed.b_enc)
    assert mechlab.load_sae(tmp_path / "sae").cfg.site == "resid_post.1"


def test_harvesting_to_disk_captures_shards_once_and_trains_on_them(tmp_path: Path) -> None:
    model = mechlab.load_model("toy:tiny").model
    tokens = torch.randint(0, int(model.cfg.d_vocab), (32, 9), generator=torch.Generator().manual_seed(2))
    config = TrainConfig(
        d_sae=32, k=4, n_tokens=64 * 6, batch_size=64, buffer_rows=128, context=9, model_batch=8
    )
    first = train_sae(
        model, "mlp_out.0", config, tokens=tokens, harvest_dir=tmp_path, harvest_tokens=8 * 8 * 2
    )
    manifest = (tmp_path / "manifest.json").read_text()
    assert read_capture(tmp_path).complete
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 2  # 16 windows, 8 per forward pass
    again = train_sae(
        model, "mlp_out.0", config, tokens=tokens, harvest_dir=tmp_path, harvest_tokens=8 * 8 * 2
    )
    assert torch.equal(first.W_dec, again.W_dec)
    assert (tmp_path / "manifest.json").read_text() == manifest


def test_the_buffer_drops_the_first_position_and_outliers() -> None:
    model = mechlab.load_model("toy:tiny").model
    tokens = torch.randint(0, int(model.cfg.d_vocab), (8, 6), generator=torch.Generator().manual_seed(1))
    buffer = ActivationBuffer(
        model, tokens, [Site.parse("resid_post.0")], capacity=16, model_batch=2, skip_first=2
    )
    rows = buffer.peek()
    assert rows.shape == (16, int(model.cfg.d_model))
    expected = torch.cat(
        [model.run_with_cache(tokens[i : i + 2])[1]["blocks.0.hook_resid_post"][:, 2:] for i in (0, 2)]
    ).reshape(-1, rows.shape[1])
    # The same 16 rows (positions 2.. of the first four windows), shuffled.
    assert torch.cdist(expected, rows).min(dim=1).values.max() < 1e-5
    assert not torch.equal(expected, rows)
    big = torch.cat([torch.ones(9, 4), 100 * torch.ones(1, 4)])
    from mechlab.dictionaries.harvest import outlier_mask

    assert outlier_mask(big, 10.0).tolist() == [True] * 9 + [False]


def test_autocast_rows_are_bfloat16_products_close_to_float32() -> None:
    model = mechlab.load_model("toy:tiny").model
    tokens = torch.randint(0, int(model.cfg.d_vocab), (4, 8), generator=torch.Generator().manual_seed(2))
    site = [Site.parse("resid_post.1")]
    plain = ActivationBuffer(model, tokens, site, capacity=28, model_batch=4).peek()
    rows = ActivationBuffer(model, tokens, site, capacity=28, model_batch=4, autocast_dtype="bfloat16").peek()
    assert rows.dtype == torch.float32 and not torch.equal(rows, plain)  # products ran in bfloat16
    fve = 1 - (rows - plain).pow(2).sum() / (plain - plain.mean(0)).pow(2).sum()
    assert fve > 0.999
    with pytest.raises(InputError, match="autocast must be one of"):
        ActivationBuffer(model, tokens, site, capacity=28, model_batch=4, autocast_dtype="int8").peek()


def test_learning_rate_warms_up_holds_and_decays() -> None:
    factors = [lr_factor(step, 100, 0.1, 0.2) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[50] == 1.0
    assert factors[80] == 1.0 and factors[90] == pytest.approx(0.5) and factors[99] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"architecture": "gated"}, "architecture must be one of"),
        ({"k": 0}, "TopK needs k"),
        ({"batch_size": 4096, "buffer_rows": 4096}, "at most half of buffer_rows"),
        ({"warmup_fraction": 0.7, "decay_fraction": 0.5}, "must not exceed 1"),
        ({"skip_first": 128}, "skip_first must be"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"autocast": "int8"}, "autocast must be"),
    ],
)
def test_bad_training_configs_are_refused(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)  # type: ignore[arg-type]


def test_sae_and_training_configs_must_agree() -> None:
    with pytest.raises(InputError, match="disagree"):
        train_sae_on(
            TensorBuffer(torch.zeros(10, 4)),
            SAEConfig(4, 8, "topk", "resid_post.0", k=2),
            TrainConfig(d_sae=8, k=3),
        )
