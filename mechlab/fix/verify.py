"""Checking a fix in llama.cpp against what mechlab predicts for it.

Two checks, both on the same token ids in both runtimes:

- **a control vector**: for each prompt, the change of the next-token logits that adding it makes in
  llama.cpp, against the change mechlab's hook-based steering makes at the same site. Compared over
  each prompt's top tokens (the union of the ``top`` most likely before and after, in mechlab), where
  the change matters; llama.cpp quantizes activations, so the two agree to within that noise;
- **a baked file**: llama.cpp running the written GGUF against mechlab's model with the direction
  ablated by hooks (KL on neutral text: the bake's own error, re-rounding included), and the
  behaviour and the KL on neutral text of the written file against the original, both in llama.cpp:
  the operator's before and after.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mechlab.directions import Direction
from mechlab.fix.ablation import (
    LogitGap,
    ablation_hooks,
    last_logits,
    mean_kl,
    next_token_log_probs,
    steering_hooks,
)
from mechlab.fix.control_vector import ControlVector, as_tensor, block_of
from mechlab.fix.runtime import Runtime, RuntimeGap, compare_files
from mechlab.sites import Site
from mechlab.types import HookedModel

TOP_TOKENS = 20
MIN_CORRELATION = 0.95  # the target for a control vector's logit changes


@dataclasses.dataclass(frozen=True)
class ControlVectorCheck:
    """llama.cpp's logit changes under a control vector against mechlab's prediction.

    Attributes:
        correlation: Pearson correlation of the changes over every prompt's top tokens.
        slope: least-squares slope of llama.cpp's change on mechlab's (1 when they agree in size).
        n_prompts, n_tokens: prompts, and (prompt, token) pairs compared.
        earlier, later: the correlation had mechlab steered one block earlier (``direction.N`` read
            as block ``N - 1``) or later (``N + 1``), for scale: the index convention would be wrong
            where one of these beat ``correlation``.
    """

    correlation: float
    slope: float
    n_prompts: int
    n_tokens: int
    earlier: float
    later: float

    @property
    def passed(self) -> bool:
        return self.correlation >= MIN_CORRELATION

    def summary(self) -> str:
        return (
            f"{'PASS' if self.passed else 'FAIL'}: the control vector's logit changes in llama.cpp "
            f"correlate {self.correlation:.4f} with mechlab's hook-based steering (slope {self.slope:.3f}; "
            f"{self.n_tokens} top tokens over {self.n_prompts} prompts; target ≥ {MIN_CORRELATION}). "
            f"Steered one block earlier or later, mechlab would predict them with {self.earlier:.4f} and "
            f"{self.later:.4f}."
        )


def check_control_vector(
    model: HookedModel,
    gguf: Path,
    vector: ControlVector,
    prompts: Sequence[str],
    *,
    top: int = TOP_TOKENS,
    threads: int | None = None,
) -> ControlVectorCheck:
    """``vector`` loaded into llama.cpp on ``gguf`` against hook-based steering of ``model``."""
    encoded = [model.to_tokens(p)[0].cpu() for p in prompts]
    with Runtime(gguf, threads=threads) as runtime:
        before = runtime.next_token_logits([e.tolist() for e in encoded])
        runtime.set_control_vector(vector)
        after = runtime.next_token_logits([e.tolist() for e in encoded])
        runtime.set_control_vector(None)
    clean = last_logits(model, encoded).double()
    shifted = {
        offset: last_logits(model, encoded, _hooks(model, vector, offset)).double() for offset in (-1, 0, 1)
    }
    ours: dict[int, list[Tensor]] = {offset: [] for offset in shifted}  # block offset → changes
    theirs = []
    for row in range(len(encoded)):
        chosen = torch.unique(torch.cat([clean[row].topk(top).indices, shifted[0][row].topk(top).indices]))
        for offset, logits in shifted.items():
            ours[offset].append((logits[row] - clean[row])[chosen])
        theirs.append(torch.from_numpy(after[row] - before[row])[chosen])
    x, y = torch.cat(ours[0]), torch.cat(theirs)
    return ControlVectorCheck(
        correlation=_pearson(x, y),
        slope=float((x - x.mean()) @ (y - y.mean()) / ((x - x.mean()) @ (x - x.mean()))),
        n_prompts=len(encoded),
        n_tokens=int(x.numel()),
        earlier=_pearson(torch.cat(ours[-1]), y),
        later=_pearson(torch.cat(ours[1]), y),
    )


def _hooks(model: HookedModel, vector: ControlVector, offset: int) -> dict:
    """Steering hooks adding each block's vector at ``resid_post`` of that block + ``offset``
    (clamped to the model's blocks)."""
    hooks: dict = {}
    for block in vector.vectors:
        site = Site("resid_post", min(max(block + offset, 0), model.cfg.n_layers - 1))
        hooks.update(steering_hooks(model, site, as_tensor(vector, block)))
    return hooks


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float(x @ y / (x.norm() * y.norm()))


@dataclasses.dataclass(frozen=True)
class BakeCheck:
    """A baked GGUF in llama.cpp: before/after on a behaviour, and against mechlab's prediction.

    Attributes:
        behaviour: the behaviour's label; ``runtime`` its values before/after and the KL on neutral
            text (original ‖ baked), all in llama.cpp.
        predicted_before, predicted_after: the same behaviour in mechlab, clean and hook-ablated.
        fidelity_kl: mean KL on neutral text, mechlab hook-ablated ‖ llama.cpp on the baked file.
        floor_kl: the same between mechlab and llama.cpp on the original file (the runtimes' own
            difference, which the bake's fidelity cannot beat).
    """

    behaviour: str
    runtime: RuntimeGap
    predicted_before: Tensor
    predicted_after: Tensor
    fidelity_kl: float
    floor_kl: float

    def summary(self) -> str:
        r = self.runtime
        before, after = float(r.before.abs().mean()), float(r.after.abs().mean())
        predicted = 1 - float(self.predicted_after.abs().mean()) / float(self.predicted_before.abs().mean())
        return (
            f"In llama.cpp on {len(r.before)} held-out prompts, mean |{self.behaviour}| {before:.3f} → "
            f"{after:.3f} ({r.fall:+.1%} fall; mechlab's hook-based ablation predicts {predicted:+.1%}); "
            f"KL on {r.n_neutral} neutral tokens, original ‖ baked, {r.kl:.4f} nats/token. The baked file "
            f"against mechlab's ablated model: KL {self.fidelity_kl:.4f} (the original file against "
            f"mechlab: {self.floor_kl:.4f})."
        )


def check_bake(
    model: HookedModel,
    original: Path,
    baked: Path,
    direction: Tensor | Direction,
    behaviour: LogitGap,
    neutral: Tensor,
    *,
    layers: Sequence[int] | None = None,
    embeddings: bool = True,
    values: Mapping[Site, float] | None = None,
    threads: int | None = None,
) -> BakeCheck:
    """The baked file against the original in llama.cpp, and against mechlab's hook-based ablation
    (``values``: the mean ablation's constants, as given to ``bake``)."""
    hooks = ablation_hooks(model, direction, layers=layers, embeddings=embeddings, values=values)
    runtime = compare_files(original, baked, behaviour, neutral, model, threads=threads)
    return BakeCheck(
        behaviour=behaviour.label,
        runtime=runtime,
        predicted_before=behaviour.measure(model),
        predicted_after=behaviour.measure(model, hooks),
        fidelity_kl=mean_kl(next_token_log_probs(model, neutral, hooks), runtime.after_log_probs),
        floor_kl=mean_kl(next_token_log_probs(model, neutral), runtime.before_log_probs),
    )


def control_vector_site(vector: ControlVector) -> Site:
    """The mechlab site of a one-block control vector (``direction.N`` → ``resid_post`` N)."""
    (block,) = vector.vectors
    return Site("resid_post", block_of(Site("resid_post", block), vector.n_layers))


def as_array(values: Tensor) -> np.ndarray:
    return values.detach().double().cpu().numpy()
