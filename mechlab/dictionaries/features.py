"""Feature pages: what one SAE latent responds to and what it writes.

For each latent a page shows, as Neuronpedia's feature dashboards do:

- its **top-activating contexts**: the token sequences of a corpus where it fires most, each cut to
  a window around its peak token, every token highlighted by the latent's activation (one colour
  scale per latent, so contexts compare);
- its **activation histogram**: how often it fires (density) and how strongly, over every token;
- its **logit effects**: the tokens its decoder direction promotes and suppresses when read
  straight through the unembedding (``W_dec[latent] @ W_U``, no final norm, as SAELens and
  Neuronpedia compute them) — where the latent writes into the residual stream's space.

``feature_pages`` reads the corpus in one pass, batch by batch (``feature_pages_many``: one pass for
several SAEs), and keeps only bounded state per latent: the ``contexts`` best windows (values,
tokens, where they came from), a fixed log-spaced histogram and a few running sums. Memory is
``O(latents × contexts × window)`` whatever the corpus size. The result (``feature_report``'s
``FeatureReport``) renders itself (``page()``, ``save(path)``) as one offline HTML page.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.activations import capture
from mechlab.dictionaries.feature_report import (
    LOG_LOW,
    N_BINS,
    PER_DECADE,
    RESIDUAL_SPACE,
    Context,
    Feature,
    FeatureReport,
)
from mechlab.dictionaries.sae import SAE
from mechlab.dictionaries.site import SAESite, attached, kind_name
from mechlab.errors import InputError
from mechlab.progress import Progress, Step
from mechlab.tokens import token_text
from mechlab.types import HookedModel


@dataclasses.dataclass
class _Running:
    """The bounded state of one pass: top windows, histogram and sums for ``n`` latents."""

    n: int
    k: int
    width: int
    values: Tensor = dataclasses.field(init=False)  # [n, k] window peaks
    tokens: Tensor = dataclasses.field(init=False)  # [n, k, width] (−1: outside the sequence)
    acts: Tensor = dataclasses.field(init=False)  # [n, k, width]
    where: Tensor = dataclasses.field(init=False)  # [n, k, 2] (sequence, peak position)
    counts: Tensor = dataclasses.field(init=False)  # [n, N_BINS]
    n_active: Tensor = dataclasses.field(init=False)
    total: Tensor = dataclasses.field(init=False)
    peak: Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.values = torch.full((self.n, self.k), -math.inf)
        self.tokens = torch.full((self.n, self.k, self.width), -1, dtype=torch.int64)
        self.acts = torch.zeros(self.n, self.k, self.width)
        self.where = torch.zeros(self.n, self.k, 2, dtype=torch.int64)
        self.counts = torch.zeros(self.n, N_BINS, dtype=torch.int64)
        self.n_active = torch.zeros(self.n, dtype=torch.int64)
        self.total = torch.zeros(self.n, dtype=torch.float64)
        self.peak = torch.zeros(self.n)

    def update(
        self, latents: Float[Tensor, "batch pos n"], tokens: Int[Tensor, "batch pos"], first: int, left: int
    ) -> None:
        """Fold one batch in; ``first`` is the batch's first sequence index in the corpus."""
        latents, tokens = latents.float().cpu(), tokens.cpu()
        batch, n_pos, _ = latents.shape
        active = latents > 0
        self.n_active += active.sum((0, 1))
        self.total += latents.clamp_min(0).sum((0, 1), dtype=torch.float64)
        self.peak = torch.maximum(self.peak, latents.amax((0, 1)))
        _, _, cols = active.nonzero(as_tuple=True)  # row-major, as latents[active]
        positive = latents[active]
        if positive.numel():
            log = positive.log10()
            bins = ((log - LOG_LOW) * PER_DECADE).floor().clamp(0, N_BINS - 1).long()
            self.counts.view(-1).index_add_(0, cols * N_BINS + bins, torch.ones_like(bins))
        # One window per (sequence, latent) around the sequence's peak for that latent.
        peaks, peak_pos = latents.max(1)  # [batch, n]
        offsets = torch.arange(self.width) - left
        index = peak_pos[..., None] + offsets  # [batch, n, width]
        inside = (index >= 0) & (index < n_pos)
        index = index.clamp(0, n_pos - 1)
        window_acts = latents.transpose(1, 2).gather(2, index)  # [batch, n, width]
        window_tokens = tokens[:, None, :].expand(-1, self.n, -1).gather(2, index)
        window_tokens = window_tokens.masked_fill(~inside, -1)
        window_acts = window_acts.masked_fill(~inside, 0.0)
        sequences = torch.arange(first, first + batch)[:, None].expand(-1, self.n)
        where = torch.stack([sequences, peak_pos], -1)  # [batch, n, 2]
        values = torch.cat([self.values, peaks.T], 1)
        order = values.topk(self.k, dim=1).indices  # [n, k]
        self.values = values.gather(1, order)
        pick = order[..., None].expand(-1, -1, self.width)
        self.tokens = torch.cat([self.tokens, window_tokens.transpose(0, 1)], 1).gather(1, pick)
        self.acts = torch.cat([self.acts, window_acts.transpose(0, 1)], 1).gather(1, pick)
        self.where = torch.cat([self.where, where.transpose(0, 1)], 1).gather(
            1, order[..., None].expand(-1, -1, 2)
        )


def _logit_effects(
    model: Any, kind: SAESite, latent: int, n: int
) -> tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
    """The ``n`` largest and smallest entries of ``W_dec[latent] @ W_U`` with their tokens."""
    if n == 0 or kind.host not in RESIDUAL_SPACE or kind.sae.cfg.d_in != int(model.cfg.d_model):
        return (), ()
    with torch.no_grad():
        w_u = model.W_U
        effect = kind.sae.W_dec[latent].to(w_u.device, w_u.dtype) @ w_u
    n = min(n, effect.shape[0] // 2)
    up = effect.topk(n)
    down = (-effect).topk(n)
    promoted = tuple(
        (token_text(model, int(i)), float(v)) for v, i in zip(up.values, up.indices, strict=True)
    )
    suppressed = tuple(
        (token_text(model, int(i)), -float(v)) for v, i in zip(down.values, down.indices, strict=True)
    )
    return promoted, suppressed


def feature_pages(
    model: HookedModel,
    sae: SAE | SAESite,
    tokens: Int[Tensor, "seq seq_pos"],
    *,
    latents: Sequence[int] | None = None,
    top: int = 20,
    contexts: int = 10,
    window: tuple[int, int] = (16, 4),
    logits: int = 10,
    batch_size: int = 8,
    corpus: str = "the given tokens",
    name: str = "sae",
    progress: Progress | None = None,
) -> FeatureReport:
    """Feature pages of some latents of ``sae`` from one pass over the corpus ``tokens``.

    Args:
        model: the hooked model the SAE reads.
        sae: an SAE (attached for the call) or an attached ``SAESite``.
        tokens: the corpus, ``[n_seq, n_pos]`` token ids (``mechlab.dictionaries.corpus`` builds one).
        latents: the latents to describe; ``None``: the ``top`` latents that fire on most tokens.
        contexts: top-activating windows kept per latent.
        window: tokens kept before and after each window's peak token.
        logits: promoted and suppressed tokens listed per latent (0: none).
        batch_size: sequences per forward pass.
        corpus: a description of the corpus for the page.
        name: the page's name for an SAE that is not attached (its site kind's name while it runs).
        progress: called with ``Step(done, total)`` after each batch.

    Raises:
        InputError: an empty corpus, a latent that does not exist, or non-positive sizes.
    """
    return feature_pages_many(
        model,
        {name: (sae, latents)},
        tokens,
        top=top,
        contexts=contexts,
        window=window,
        logits=logits,
        batch_size=batch_size,
        corpus=corpus,
        progress=progress,
    )[name]


def feature_pages_many(
    model: HookedModel,
    saes: Mapping[str, tuple[SAE | SAESite, Sequence[int] | None]],
    tokens: Int[Tensor, "seq seq_pos"],
    *,
    top: int = 20,
    contexts: int = 10,
    window: tuple[int, int] = (16, 4),
    logits: int = 10,
    batch_size: int = 8,
    corpus: str = "the given tokens",
    progress: Progress | None = None,
) -> dict[str, FeatureReport]:
    """``feature_pages`` of several SAEs (``{name: (sae, latents)}``) from one shared pass over the
    corpus: every batch runs the model once and feeds each SAE. Arguments as ``feature_pages``."""
    if (
        not isinstance(tokens, Tensor)
        or tokens.ndim != 2
        or tokens.numel() == 0
        or tokens.is_floating_point()
    ):
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InputError(f"feature_pages needs a corpus of token ids [n_seq, n_pos]; got {shape}.")
    sizes = {"top": top, "contexts": contexts, "batch_size": batch_size, "logits": logits + 1}
    if any(value < 1 for value in sizes.values()) or min(window) < 0:
        raise InputError(
            f"feature_pages needs top, contexts, batch_size ≥ 1, logits ≥ 0 and window ≥ (0, 0); got "
            f"top={top}, contexts={contexts}, batch_size={batch_size}, logits={logits}, window={window}."
        )
    with ExitStack() as stack, torch.no_grad():
        kinds: dict[str, SAESite] = {}
        chosen: dict[str, list[int] | None] = {}
        running: dict[str, _Running] = {}
        for name, (sae, latents) in saes.items():
            kind = (
                sae
                if isinstance(sae, SAESite)
                else stack.enter_context(attached(model, sae, name=kind_name(name)))
            )
            d_sae = kind.sae.cfg.d_sae
            picked = None if latents is None else list(dict.fromkeys(int(i) for i in latents))
            if picked is not None:
                bad = [i for i in picked if not 0 <= i < d_sae]
                if bad or not picked:
                    raise InputError(
                        f"Latents {bad or picked} do not exist: the SAE has latents 0..{d_sae - 1}."
                    )
            tracked = d_sae if picked is None else len(picked)
            kinds[name], chosen[name] = kind, picked
            running[name] = _Running(tracked, min(contexts, int(tokens.shape[0])), sum(window) + 1)
        sites = {name: kind.site() for name, kind in kinds.items()}
        device = torch.device(model.cfg.device)
        n_batches = math.ceil(tokens.shape[0] / batch_size)
        for b in range(n_batches):
            batch = tokens[b * batch_size : (b + 1) * batch_size].to(device)
            captured = capture(model, batch, list(sites.values()), max_bytes=None, logits=False)
            for name, site in sites.items():
                acts = captured[site]
                if not torch.isfinite(acts).all():
                    raise InputError(
                        f"The latents of SAE {name!r} are not finite on corpus sequences {b * batch_size}.."
                        f"{b * batch_size + len(batch) - 1}: check the SAE's weights and the model's dtype."
                    )
                picked = chosen[name]
                running[name].update(
                    acts if picked is None else acts[..., picked], batch, b * batch_size, window[0]
                )
            if progress is not None:
                progress(Step(b + 1, n_batches))
        return {
            name: _report(
                model, kinds[name], running[name], chosen[name], top, logits, int(tokens.numel()), corpus
            )
            for name in saes
        }


def _report(
    model: HookedModel,
    kind: SAESite,
    running: _Running,
    chosen: list[int] | None,
    top: int,
    logits: int,
    n_tokens: int,
    corpus: str,
) -> FeatureReport:
    """The report of one SAE once the pass is over."""
    d_sae = kind.sae.cfg.d_sae
    frequency = running.n_active.double() / n_tokens
    order = chosen or frequency.argsort(descending=True, stable=True)[:top].tolist()
    rows = list(range(len(chosen))) if chosen is not None else order
    features = tuple(
        _feature(model, kind, running, row, latent, n_tokens, logits)
        for row, latent in zip(rows, order, strict=True)
    )
    if chosen is not None:
        full = torch.full((d_sae,), math.nan, dtype=torch.float64)
        full[chosen] = frequency
        frequency = full
    return FeatureReport(kind.name, str(kind.sae.cfg.site), features, n_tokens, corpus, frequency.float())


def _feature(
    model: HookedModel, kind: SAESite, running: _Running, row: int, latent: int, n_tokens: int, logits: int
) -> Feature:
    found = []
    for j in range(running.k):
        if not running.values[row, j] > 0:
            continue
        ids = running.tokens[row, j]
        keep = ids >= 0
        values = running.acts[row, j][keep]
        found.append(
            Context(
                tokens=tuple(token_text(model, int(i)) for i in ids[keep]),
                values=tuple(float(v) for v in values),
                peak=int(values.argmax()),
                sequence=int(running.where[row, j, 0]),
                position=int(running.where[row, j, 1]),
            )
        )
    n_active = int(running.n_active[row])
    promoted, suppressed = _logit_effects(model, kind, latent, logits)
    return Feature(
        latent=latent,
        contexts=tuple(found),
        n_tokens=n_tokens,
        n_active=n_active,
        max_value=float(running.peak[row]),
        mean_active=float(running.total[row]) / n_active if n_active else 0.0,
        counts=tuple(int(c) for c in running.counts[row]),
        promoted=promoted,
        suppressed=suppressed,
    )
