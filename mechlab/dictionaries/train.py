"""Training sparse autoencoders (and transcoders) on a model's activations, resumably.

Algorithm (``train_sae_on``; ``train_sae`` adds the corpus and the activation buffer; the settings
are ``train_config.TrainConfig``):

1. Scale inputs so their mean norm is ``sqrt(d_in)`` (SAELens's ``expected_average_only_in``),
   which makes the hyper-parameters transfer between sites and models; the factor is folded into
   the weights at the end, so the saved SAE reads raw activations.
2. Initialize: decoder rows in random directions (unit norm for TopK, 0.1 otherwise), the encoder
   their transpose, ``b_dec`` the mean input, JumpReLU thresholds ``init_threshold``.
3. Each step draws ``batch_size`` rows, encodes, decodes (plus ``x @ W_skip`` for a transcoder
   trained with ``skip``), and minimizes the squared error (summed over the width, averaged over
   rows) plus the architecture's term:

   - TopK: AuxK (Gao et al. 2024): the ``aux_k`` largest pre-activations of the *dead* latents
     (not fired for ``dead_after_tokens`` tokens) reconstruct the residual error, weighted by
     ``aux_coefficient``; dead latents get gradient and revive. Decoder rows are renormalized to
     unit norm after every step.
   - JumpReLU: ``l0_coefficient * L0`` through the straight-through step (``architectures``).
   - ReLU: ``l1_coefficient * sum(z * ||W_dec||)``, its coefficient warmed up over the first
     ``warmup_fraction`` of training (Anthropic's April 2024 update).
4. Adam; the learning rate rises linearly over ``warmup_fraction`` of the steps, stays, and decays
   linearly to zero over the last ``decay_fraction``.
5. Every ``checkpoint_every`` steps the whole state (weights, optimizer, step, the buffer's rows and
   RNG, the dead-latent counters) is written atomically to ``checkpoint_dir/state.pt``; a run given
   the same ``checkpoint_dir`` resumes there and ends bit-identical to an uninterrupted run.

Progress is reported through ``progress=`` as a ``TrainProgress`` (``done``/``total`` steps, and the
live loss, fraction of variance explained, L0, dead fraction, learning rate, tokens/s).
"""

import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.dictionaries import architectures
from mechlab.dictionaries.harvest import ActivationBuffer, BatchSource, model_device
from mechlab.dictionaries.sae import SAE, SAEConfig
from mechlab.dictionaries.train_config import TrainConfig, TrainProgress, lr_factor
from mechlab.dictionaries.transcoder import Transcoder
from mechlab.errors import InputError
from mechlab.files import atomic_write
from mechlab.progress import Progress
from mechlab.sites import Site
from mechlab.types import HookedModel

CHECKPOINT = "state.pt"
CHECKPOINT_FORMAT = "mechlab-sae-train/1"


class _Trainer:
    """The training state and one step of the algorithm (see the module docstring)."""

    def __init__(
        self, cfg: SAEConfig, config: TrainConfig, source: BatchSource, device: torch.device
    ) -> None:
        self.cfg, self.config, self.source, self.device = cfg, config, source, device
        self.step = 0
        self.scale_in, self.scale_out = 1.0, 1.0
        self.sae = _dictionary(cfg, config.skip, device, config.seed)
        self.log_threshold: Tensor | None = None
        if cfg.architecture == "jumprelu":
            start = torch.full((cfg.d_sae,), math.log(config.init_threshold), device=device)
            self.log_threshold = torch.nn.Parameter(start)
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
        parameters = list(self.sae.parameters()) + (
            [self.log_threshold] if self.log_threshold is not None else []
        )
        self.optimizer = torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.999))

    # -- setup (first start only) --
    def initialize(self) -> None:
        rows = self.source.peek().to(self.device).float()
        x, y = self._split(rows)
        if self.config.normalize:
            self.scale_in = float(x.shape[-1] ** 0.5 / x.norm(dim=-1).mean().clamp_min(1e-12))
            self.scale_out = float(y.shape[-1] ** 0.5 / y.norm(dim=-1).mean().clamp_min(1e-12))
        with torch.no_grad():
            if self.cfg.architecture == "topk":
                self.sae.W_dec.div_(self.sae.decoder_norms()[:, None])
                if self.cfg.width_out == self.cfg.d_in:
                    self.sae.W_enc.copy_(self.sae.W_dec.T)
            self.sae.b_dec.copy_((y * self.scale_out).mean(dim=0))

    def _split(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        if self.cfg.site_out is None:
            return rows, rows
        return rows[:, : self.cfg.d_in], rows[:, self.cfg.d_in :]

    # -- one step --
    def train_step(self) -> dict[str, float]:
        config, sae = self.config, self.sae
        factor = lr_factor(self.step, config.steps, config.warmup_fraction, config.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr * factor
        x, y = self._split(self.source.next_batch(config.batch_size).to(self.device).float())
        x, y = x * self.scale_in, y * self.scale_out
        pre = sae.pre_activation(x)
        linear = sae.skip(x) if isinstance(sae, Transcoder) else 0.0
        aux = torch.zeros((), device=self.device)
        if self.cfg.architecture == "topk":
            assert self.cfg.k is not None
            values, indices = architectures.topk_sparse(pre, self.cfg.k)
            y_hat = architectures.sparse_decode(values, indices, sae.W_dec) + sae.b_dec + linear
            aux = config.aux_coefficient * self._aux_loss(pre, y - y_hat.detach())
            active = values > 0
            fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=self.device)
            fired[indices[active]] = True
            l0 = active.float().sum(-1).mean()
        elif self.cfg.architecture == "jumprelu":
            assert self.log_threshold is not None
            threshold = self.log_threshold.exp()
            z = architectures.jumprelu_train(pre, threshold, config.bandwidth)
            y_hat = sae.decode(z) + linear
            penalty = architectures.step_train(pre, threshold, config.bandwidth).sum(-1).mean()
            aux = config.l0_coefficient * penalty
            fired, l0 = (z > 0).any(dim=0), (z > 0).float().sum(-1).mean()
        else:
            z = torch.relu(pre)
            y_hat = sae.decode(z) + linear
            warm = min(1.0, (self.step + 1) / max(1, round(config.warmup_fraction * config.steps)))
            aux = warm * config.l1_coefficient * (z * sae.decoder_norms()).sum(-1).mean()
            fired, l0 = (z > 0).any(dim=0), (z > 0).float().sum(-1).mean()
        squared = (y_hat - y).pow(2).sum(-1)
        mse = squared.mean()
        loss = mse + aux
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        if self.cfg.architecture == "topk":
            with torch.no_grad():
                sae.W_dec.div_(sae.decoder_norms().clamp_min(1e-12)[:, None])
        self.since_fired += x.shape[0]
        self.since_fired[fired] = 0
        self.step += 1
        variance = (y - y.mean(dim=0)).pow(2).sum(-1).sum()
        return {
            "loss": float(loss.detach()),
            "fve": float(1 - squared.detach().sum() / variance.clamp_min(1e-12)),
            "l0": float(l0),
            "dead_fraction": float((self.since_fired >= config.dead_after_tokens).float().mean()),
            "lr": config.lr * factor,
        }

    def _aux_loss(self, pre: Tensor, error: Tensor) -> Tensor:
        dead = self.since_fired >= self.config.dead_after_tokens
        n_dead = int(dead.sum())
        if n_dead == 0:
            return torch.zeros((), device=self.device)
        k_aux = min(self.config.aux_k or self.cfg.d_in // 2, n_dead)
        masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
        error_hat = architectures.sparse_decode(*architectures.topk_sparse(masked, k_aux), self.sae.W_dec)
        scale = (error - error.mean(dim=0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        aux = (error_hat - error).pow(2).sum(-1).mean() / scale
        return torch.nan_to_num(aux, nan=0.0)

    # -- the finished SAE --
    def finished(self) -> SAE:
        out = _dictionary(self.cfg, self.config.skip, self.device, self.config.seed)
        with torch.no_grad():
            out.load_state_dict(self.sae.state_dict(), strict=False)
            if self.log_threshold is not None:
                out.threshold.copy_(self.log_threshold.exp())
            # Fold the input/output scales in: the saved SAE reads and writes raw activations.
            out.W_enc.mul_(self.scale_in)
            out.W_dec.div_(self.scale_out)
            out.b_dec.div_(self.scale_out)
            if isinstance(out, Transcoder) and out.W_skip is not None:
                out.W_skip.mul_(self.scale_in / self.scale_out)
        return out

    # -- checkpoints --
    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "sae_config": dataclasses.asdict(self.cfg),
            "train_config": dataclasses.asdict(self.config),
            "step": self.step,
            "scale_in": self.scale_in,
            "scale_out": self.scale_out,
            "sae": self.sae.state_dict(),
            "log_threshold": self.log_threshold.detach() if self.log_threshold is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "since_fired": self.since_fired,
            "source": self.source.state_dict(),
        }

    def load(self, state: dict[str, Any], where: Path) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{where} is not a mechlab SAE training checkpoint.")
        # a setting added since the checkpoint was written counts as its default
        defaults = dataclasses.asdict(TrainConfig())
        saved = {**defaults, **state["train_config"]}
        if state["sae_config"] != dataclasses.asdict(self.cfg) or saved != dataclasses.asdict(self.config):
            raise InputError(
                f"{where} holds a checkpoint of a different SAE or training configuration. Resume with "
                "the same settings, or choose another checkpoint directory (or delete this one)."
            )
        self.step = int(state["step"])
        self.scale_in, self.scale_out = float(state["scale_in"]), float(state["scale_out"])
        self.sae.load_state_dict(state["sae"])
        if self.log_threshold is not None:
            with torch.no_grad():
                self.log_threshold.copy_(state["log_threshold"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.since_fired = state["since_fired"].to(self.device)
        self.source.load_state_dict(state["source"])

    def save_checkpoint(self, directory: Path) -> None:
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / CHECKPOINT, buffer.getvalue())


def _dictionary(cfg: SAEConfig, skip: bool, device: torch.device, seed: int) -> SAE:
    """The dictionary being trained: an ``SAE``, or a ``Transcoder`` with a skip connection."""
    return (
        Transcoder(cfg, skip=True, device=device, seed=seed) if skip else SAE(cfg, device=device, seed=seed)
    )


def train_sae_on(
    source: BatchSource,
    cfg: SAEConfig,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> SAE:
    """Train an SAE of shape ``cfg`` on rows drawn from ``source`` (steps 1-5 of the module docstring).

    Args:
        source: an ``ActivationBuffer`` or ``TensorBuffer`` (rows of width ``d_in``, or
            ``d_in + d_out`` for a transcoder).
        cfg: the SAE to train (its ``normalize_activations`` must be ``"none"``: the scale is folded).
        config: the training settings (``architecture``, ``d_sae`` and ``k`` must agree with ``cfg``).
        checkpoint_dir: write checkpoints here, and resume from one found here.
        device: where the SAE trains (default: CPU).
        progress: called with a ``TrainProgress`` after every step.

    Returns:
        The trained SAE (on ``device``), reading raw (unscaled) activations; a ``Transcoder`` with
        its skip connection when ``config.skip``.
    """
    if (cfg.architecture, cfg.d_sae, cfg.k) != (
        config.architecture,
        config.d_sae,
        config.k if cfg.k else None,
    ):
        raise InputError(
            f"The SAE config ({cfg.architecture}, d_sae={cfg.d_sae}, k={cfg.k}) and the training config "
            f"({config.architecture}, d_sae={config.d_sae}, k={config.k}) disagree."
        )
    if config.skip and cfg.site_out is None:
        raise InputError(
            f"skip=True trains a transcoder's skip connection; the SAE config reads and writes one site "
            f"({cfg.site}). Use transcoder_config(...), or train without skip."
        )
    if cfg.normalize_activations != "none":
        raise InputError(
            "train_sae_on scales inputs itself; pass an SAEConfig with normalize_activations='none'."
        )
    trainer = _Trainer(
        cfg, config, source, torch.device(device) if device is not None else torch.device("cpu")
    )
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None and (directory / CHECKPOINT).is_file():
        trainer.load(torch.load(directory / CHECKPOINT, weights_only=False), directory / CHECKPOINT)
    else:
        trainer.initialize()
    started, first = time.perf_counter(), trainer.step
    while trainer.step < config.steps:
        metrics = trainer.train_step()
        if not math.isfinite(metrics["loss"]):
            raise InputError(
                f"Training diverged at step {trainer.step} (loss {metrics['loss']}). "
                f"Lower lr (now {config.lr})."
            )
        if directory is not None and (
            trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps
        ):
            trainer.save_checkpoint(directory)
        if progress is not None:
            elapsed = max(time.perf_counter() - started, 1e-9)
            rate = (trainer.step - first) * config.batch_size / elapsed
            progress(TrainProgress(done=trainer.step, total=config.steps, tokens_per_second=rate, **metrics))
    return trainer.finished()


def train_sae(
    model: HookedModel,
    site: Site | str,
    config: TrainConfig | None = None,
    *,
    tokens: Int[Tensor, "n_seq context"] | None = None,
    site_out: Site | str | None = None,
    out_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    harvest_dir: str | Path | None = None,
    harvest_tokens: int | None = None,
    device: torch.device | str | None = None,
    model_name: str | None = None,
    progress: Progress | None = None,
    harvest_progress: Progress | None = None,
) -> SAE:
    """Train an SAE on ``model``'s activations at ``site`` over the offline corpus.

    Activations come either streamed (``ActivationBuffer``: the model runs as training goes, memory
    bounded by ``config.buffer_rows``) or, with ``harvest_dir``, captured once to shards on disk
    (``capture_dataset``, resumable) and then read for as many epochs as ``n_tokens`` needs: cheaper
    when the model's forward pass is the bottleneck, as on a CPU.

    Args:
        model: the model (HookedTransformer protocol).
        site: the site read, e.g. ``"resid_post.15"`` (any kind; trailing axes are flattened).
        config: training settings (default ``TrainConfig()``).
        tokens: ``[n_seq, context]`` windows to read instead of the corpus (``corpus_tokens``).
        site_out: train a transcoder from ``site`` to this site instead.
        out_dir: save the trained SAE here (SAELens layout).
        checkpoint_dir: write checkpoints here, and resume from one found here.
        harvest_dir: capture activations to shards here first, then train on them.
        harvest_tokens: how many tokens to capture into ``harvest_dir`` (default ``n_tokens``).
        device: where the SAE trains (default: the model's device).
        model_name: recorded in the SAE's config.
        progress: called with a ``TrainProgress`` after every step.
        harvest_progress: called as ``capture_dataset`` writes shards (``harvest_dir`` only).

    Returns:
        The trained SAE.
    """
    from mechlab.dictionaries.corpus import corpus_tokens, token_stream
    from mechlab.dictionaries.harvest import TensorBuffer, harvest_to_disk, rows_from_capture
    from mechlab.tokens import require_tokenizer

    config = config or TrainConfig()
    sites = [Site.parse(site) if isinstance(site, str) else site]
    if site_out is not None:
        sites.append(Site.parse(site_out) if isinstance(site_out, str) else site_out)
    per_window = config.context - config.skip_first
    wanted_tokens = harvest_tokens if harvest_dir is not None and harvest_tokens else config.n_tokens
    if tokens is None:
        available = token_stream(require_tokenizer(model), "train").numel() // config.context
        extra = 0 if harvest_dir is not None else config.buffer_rows
        n_windows = min(available, -(-(wanted_tokens + extra) // per_window))
        tokens = corpus_tokens(model, n_windows * config.context, context=config.context, seed=config.seed)
    elif harvest_dir is not None and harvest_tokens:
        tokens = tokens[: -(-harvest_tokens // per_window)]
    probe = _widths(model, tokens[:1, : config.skip_first + 2], sites, config.skip_first)
    cfg = SAEConfig(
        d_in=probe[0],
        d_sae=config.d_sae,
        architecture=config.architecture,
        site=str(sites[0]),
        k=config.k if config.architecture == "topk" else None,
        d_out=probe[1] if len(probe) > 1 and probe[1] != probe[0] else None,
        site_out=str(sites[1]) if len(sites) > 1 else None,
        model_name=model_name,
    )
    source: BatchSource
    if harvest_dir is not None:
        dataset = harvest_to_disk(
            model,
            tokens,
            sites,
            harvest_dir,
            batch_size=config.model_batch,
            autocast_dtype=config.autocast,
            progress=harvest_progress,
        )
        rows = rows_from_capture(
            dataset, sites, skip_first=config.skip_first, outlier_ratio=config.outlier_ratio
        )
        source = TensorBuffer(rows, seed=config.seed)
    else:
        source = ActivationBuffer(
            model,
            tokens,
            sites,
            capacity=config.buffer_rows,
            model_batch=config.model_batch,
            skip_first=config.skip_first,
            outlier_ratio=config.outlier_ratio,
            seed=config.seed,
            autocast_dtype=config.autocast,
        )
    device = device if device is not None else model_device(model)
    sae = train_sae_on(source, cfg, config, checkpoint_dir=checkpoint_dir, device=device, progress=progress)
    if out_dir is not None:
        sae.save(out_dir)
    return sae


def _widths(model: HookedModel, tokens: Tensor, sites: list[Site], skip_first: int) -> list[int]:
    from mechlab.dictionaries.harvest import site_activations

    return [int(site_activations(model, tokens, [s], skip_first=skip_first).shape[-1]) for s in sites]
