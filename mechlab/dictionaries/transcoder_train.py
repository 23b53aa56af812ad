"""Training and evaluating a set of per-layer transcoders on the operator's model.

``train_transcoders`` captures ``mlp_in.L`` and ``mlp_out.L`` of the chosen layers, a group at a time
(rows kept in memory as float16: ``tokens × layers × 2 × d_model × 2`` bytes, at most ``max_bytes``),
and trains one transcoder per layer with the SAE trainer (``train_sae_on`` on ``[mlp_in, mlp_out]``
rows), saving each as ``out_dir/layer_L``. ``evaluate_transcoders`` reports, per layer, the fraction
of the MLP output's variance explained (FVE), L0 and dead latents, and the next-token loss with
every MLP replaced by its transcoder at once (each reading the replaced model's own ``mlp_in``).
"""

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.dictionaries.harvest import TensorBuffer
from mechlab.dictionaries.train import train_sae_on
from mechlab.dictionaries.train_config import TrainConfig
from mechlab.dictionaries.transcoder import Transcoder, from_sae, transcoder_config
from mechlab.errors import InputError
from mechlab.hooks import SiteHook, hooked, recorder
from mechlab.progress import Progress, Step
from mechlab.sites import Site
from mechlab.types import HookedModel


@torch.no_grad()
def _pairs(
    model: HookedModel,
    tokens: Int[Tensor, "seq pos"],
    layers: Sequence[int],
    config: TrainConfig,
    batch: int,
) -> dict[int, Tensor]:
    """``[mlp_in, mlp_out]`` rows (float16) of ``layers``, the forward pass stopped after the last."""
    from mechlab.activations import capture
    from mechlab.dictionaries.harvest import autocast

    sites = [Site(kind, layer) for layer in layers for kind in ("mlp_in", "mlp_out")]
    rows: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    skip = config.skip_first
    for start in range(0, len(tokens), batch):
        with autocast(model, config.autocast):
            acts = capture(model, tokens[start : start + batch], sites, logits=False, max_bytes=None)
        for layer in layers:
            pair = torch.cat([acts[Site("mlp_in", layer)], acts[Site("mlp_out", layer)]], dim=-1)
            rows[layer].append(pair[:, skip:].reshape(-1, pair.shape[-1]).to(torch.float16).cpu())
    return {layer: torch.cat(parts) for layer, parts in rows.items()}


def train_transcoders(
    model: HookedModel,
    tokens: Int[Tensor, "seq pos"],
    config: TrainConfig,
    *,
    layers: Sequence[int] | None = None,
    out_dir: str | Path | None = None,
    model_batch: int = 8,
    max_bytes: int = 4 << 30,
    progress: Progress | None = None,
) -> dict[int, Transcoder]:
    """Train one transcoder per layer (``config.n_tokens`` rows each, epochs over the captured rows).

    Layers are captured in groups whose rows fit ``max_bytes`` (float16), each group's forward
    passes stopped after its last layer, and trained before the next group is captured.

    Args:
        model: the model.
        tokens: ``[n_seq, context]`` corpus windows (``corpus_tokens``).
        config: the SAE training settings (``architecture``, ``d_sae``, ``k``, ``lr``, ``autocast``...).
        layers: the MLPs to replace (default: all).
        out_dir: save each as ``out_dir/layer_L`` (mechlab/SAELens layout); a layer whose directory
            is already there is loaded, not trained again (an interrupted run resumes).
        model_batch: windows per forward pass while capturing.
        max_bytes: memory for captured rows at a time.
        progress: called with ``Step(done_layers, n_layers)``.
    """
    from mechlab.dictionaries.transcoder import load_transcoder

    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else sorted(set(layers))
    if not layers or not all(0 <= layer < n_layers for layer in layers):
        raise InputError(f"layers must be in 0..{n_layers - 1}; got {layers}.")
    if tokens.ndim != 2 or tokens.shape[1] <= config.skip_first:
        raise InputError(
            f"tokens must be [n_seq, context] with context > skip_first; got {tuple(tokens.shape)}."
        )
    d_model = model.cfg.d_model
    n_rows = tokens.shape[0] * (tokens.shape[1] - config.skip_first)
    if config.batch_size > n_rows:
        raise InputError(
            f"batch_size {config.batch_size} exceeds the {n_rows} rows captured; pass more tokens."
        )
    per_group = max(1, max_bytes // (n_rows * 2 * d_model * 2))
    out: dict[int, Transcoder] = {}
    saved = {layer: Path(out_dir) / f"layer_{layer}" for layer in layers} if out_dir is not None else {}
    todo = [layer for layer in layers if not (layer in saved and (saved[layer] / "cfg.json").is_file())]
    for layer in layers:
        if layer not in todo:
            out[layer] = load_transcoder(saved[layer])
            have = out[layer].cfg
            skip = out[layer].W_skip is not None
            if (have.architecture, have.d_sae, have.k, skip) != (
                config.architecture,
                config.d_sae,
                config.k,
                config.skip,
            ):
                raise InputError(
                    f"{saved[layer]} holds a transcoder ({have.architecture}, d_sae={have.d_sae}, "
                    f"k={have.k}, skip={skip}) other than the one asked for ({config.architecture}, "
                    f"d_sae={config.d_sae}, k={config.k}, skip={config.skip}). Choose another out_dir, "
                    "or delete it."
                )
    for first in range(0, len(todo), per_group):
        group = todo[first : first + per_group]
        rows = _pairs(model, tokens, group, config, model_batch)
        for layer in group:
            data = rows.pop(layer).float()
            cfg = transcoder_config(
                d_model, layer, config.d_sae, architecture=config.architecture, k=config.k
            )
            trained = train_sae_on(TensorBuffer(data, seed=config.seed + layer), cfg, config)
            tc = trained if isinstance(trained, Transcoder) else from_sae(trained)
            if layer in saved:
                tc.save(saved[layer])
            out[layer] = tc
            if progress is not None:
                progress(Step(done=len(out), total=len(layers)))
    return {layer: out[layer] for layer in layers}


@dataclasses.dataclass(frozen=True)
class TranscoderEvaluation:
    """Per-layer FVE of the MLP output, L0 and dead fraction; loss with every MLP replaced."""

    fve: dict[int, float]
    l0: dict[int, float]
    dead_fraction: dict[int, float]
    ce_clean: float
    ce_replaced: float
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        lines = [
            f"layer {layer:>2}: FVE {self.fve[layer]:.3f} · L0 {self.l0[layer]:.1f} · "
            f"dead {100 * self.dead_fraction[layer]:.1f}%"
            for layer in self.fve
        ]
        lines.append(
            f"CE clean {self.ce_clean:.4f} · every MLP replaced {self.ce_replaced:.4f} "
            f"({self.n_tokens:,} tokens)"
        )
        return "\n".join(lines)


def _ce(logits: Tensor, tokens: Tensor, skip_first: int) -> Tensor:
    logp = torch.log_softmax(logits[:, skip_first:-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, skip_first + 1 :, None]).squeeze(-1)


def _spliced(transcoders: Mapping[int, Transcoder]) -> list[tuple[Site, SiteHook]]:
    """Hooks replacing every MLP output by its transcoder's prediction from the same pass's input."""
    seen: dict[int, Tensor] = {}

    def read(layer: int) -> SiteHook:
        def hook(act: Tensor, _site: Site) -> None:
            seen[layer] = act

        return hook

    def write(layer: int) -> SiteHook:
        return lambda act, _site: transcoders[layer](seen[layer]).to(act.dtype)

    hooks = [(Site("mlp_in", layer), read(layer)) for layer in transcoders]
    return hooks + [(Site("mlp_out", layer), write(layer)) for layer in transcoders]


@torch.no_grad()
def evaluate_transcoders(
    model: HookedModel,
    transcoders: Mapping[int, Transcoder],
    tokens: Int[Tensor, "seq pos"],
    *,
    skip_first: int = 1,
    batch: int = 8,
) -> TranscoderEvaluation:
    """Evaluate ``{layer: transcoder}`` on held-out windows ``tokens`` (see the module docstring)."""
    if not transcoders:
        raise InputError("evaluate_transcoders needs at least one transcoder.")
    layers = sorted(transcoders)
    residual = {layer: 0.0 for layer in layers}
    total = {layer: 0.0 for layer in layers}
    active = {layer: 0.0 for layer in layers}
    fired = {layer: torch.zeros(transcoders[layer].cfg.d_sae, dtype=torch.bool) for layer in layers}
    clean, replaced, count = 0.0, 0.0, 0
    for start in range(0, len(tokens), batch):
        chunk = tokens[start : start + batch]
        acts: dict[Site, Tensor] = {}
        sites = [Site(kind, layer) for layer in layers for kind in ("mlp_in", "mlp_out")]
        with hooked(model, {site: recorder(acts) for site in sites}):
            logits = model(chunk)
        clean += float(_ce(logits, chunk, skip_first).sum())
        for layer in layers:
            x = acts[Site("mlp_in", layer)][:, skip_first:]
            y = acts[Site("mlp_out", layer)][:, skip_first:].float()
            z = transcoders[layer].encode(x)
            pred = transcoders[layer].decode(z) + transcoders[layer].skip(x)
            residual[layer] += float((y - pred).pow(2).sum())
            total[layer] += float((y - y.reshape(-1, y.shape[-1]).mean(0)).pow(2).sum())
            active[layer] += float((z != 0).sum())
            fired[layer] |= (z != 0).reshape(-1, z.shape[-1]).any(0).cpu()
        hooks = _spliced(transcoders)
        with hooked(model, hooks):
            logits = model(chunk)
        loss = _ce(logits, chunk, skip_first)
        if not torch.isfinite(loss).all():
            raise InputError("The loss with the transcoders spliced in is NaN or infinite.")
        replaced += float(loss.sum())
        count += loss.numel()
    n_rows = count + len(tokens)  # rows per layer: every position after skip_first
    return TranscoderEvaluation(
        fve={layer: 1 - residual[layer] / max(total[layer], 1e-30) for layer in layers},
        l0={layer: active[layer] / n_rows for layer in layers},
        dead_fraction={layer: float((~fired[layer]).float().mean()) for layer in layers},
        ce_clean=clean / count,
        ce_replaced=replaced / count,
        n_tokens=count,
    )
