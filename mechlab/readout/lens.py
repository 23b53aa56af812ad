"""Logit lens and direct logit attribution: reading the residual stream in the vocabulary.

The residual stream is a sum: token embedding (+ positional embedding) + every attention layer's
output + every MLP's output. The model reads it once, at the end, through the final norm and the
unembedding ``W_U``.

**Logit lens** (nostalgebraist 2020): read the *accumulated* residual stream before each layer
(and after the last) through the model's own final norm and unembedding, as if the model stopped
there. The norm is recomputed for each partial sum — for RMSNorm models like SmolLM2 that is
``x / rms(x) * w`` with the norm's learned weight ``w``; the last row is exactly the model's logits.
mechlab reads through TransformerLens's ``logit_readout`` (the real ``ln_final`` module, ``W_U``,
``b_U`` and any post-unembedding transform).

**Direct logit attribution** (DLA): how much each component *writes directly* toward a target
logit (or a logit difference). The final norm is not linear, so DLA freezes it: the norm's scale at
the read position is taken from the clean run and treated as a constant. Then the map from residual
to logit is linear, ``logit = Σ_c (norm_frozen(c) · w) @ W_U[:, t] + biases``, and the
contributions of the embedding, each head (``z_h @ W_O[h]``; ``W_O`` is per *query* head, so
grouped-query models need nothing special), each attention output bias, each MLP, and the bias
terms (the norm's bias and ``b_U``) add up to the logit the model produced. What is left over — the
``remainder`` — is floating-point error, or a part of the stream the decomposition does not know
(it would show up here, not vanish). DLA measures direct effects only: a head whose output is
read by later layers gets no credit for what they do with it.
"""

import dataclasses
from typing import Any

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.activations import capture
from mechlab.render.figures import lines
from mechlab.render.page import Page
from mechlab.render.tokens import plot_text
from mechlab.sites import Site, layer_sites
from mechlab.targets import resolve_pos
from mechlab.tokens import as_tokens, single_token, str_tokens, token_text
from mechlab.types import HookedModel, Tokens


@dataclasses.dataclass(frozen=True, eq=False)
class LogitLens:
    """The model's next-token logits read from the residual stream before every layer.

    Attributes:
        tokens: the prompt ``[1, pos]``; ``str_tokens`` its token texts.
        pos: the (non-negative) position read.
        labels: one per row: ``L0 pre`` … ``L{n-1} pre``, ``final``.
        logits: ``[row, d_vocab]``; the ``final`` row equals the model's logits at ``pos``.
        targets: token ids tracked in plots and tables (default: the model's top prediction).
        target_names: their texts.
        top_tokens: per row, the 10 most likely ``(token text, probability)``.
    """

    tokens: Tokens
    str_tokens: tuple[str, ...]
    pos: int
    labels: tuple[str, ...]
    logits: Float[Tensor, "row d_vocab"]
    targets: tuple[int, ...]
    target_names: tuple[str, ...]
    top_tokens: tuple[tuple[tuple[str, float], ...], ...]

    def log_probs(self) -> Float[Tensor, "row d_vocab"]:
        return torch.log_softmax(self.logits.float(), dim=-1)

    def target_log_probs(self) -> Float[Tensor, "row target"]:
        """``log p(target)`` at every row, one column per target."""
        return self.log_probs()[:, list(self.targets)]

    def ranks(self, token: int) -> Tensor:
        """Rank of ``token`` at every row (0 = the lens's top prediction)."""
        return (self.logits > self.logits[:, token : token + 1]).sum(-1)

    def first_layer_top(self, token: int) -> int | None:
        """Index of the first row from which ``token`` stays the top prediction, or ``None``."""
        top = (self.ranks(token) == 0).tolist()
        for row in range(len(top)):
            if all(top[row:]):
                return row
        return None

    def plot(self) -> Figure:
        """Each target's log-probability per layer."""
        lps = self.target_log_probs()
        series: dict[str, Any] = {
            plot_text(repr(name)): lps[:, i] for i, name in enumerate(self.target_names)
        }
        return lines(
            series,
            title=plot_text(f"Logit lens at position {self.pos} ({self.str_tokens[self.pos]!r})"),
            xlabel="residual stream read before layer",
            ylabel="log p",
            xticklabels=list(self.labels),
        )

    def add_to(self, page: Page, *, title: str = "Logit lens") -> Page:
        """Append a section: the targets' trajectories and the top tokens per layer."""
        section = page.section(
            title,
            f"The next-token prediction at position {self.pos} ({self.str_tokens[self.pos]!r}) read from "
            "the residual stream before each layer through the model's final norm and unembedding.",
        )
        section.figure(self.plot(), alt="log-probability of the targets per layer")
        ranks = torch.stack([self.ranks(t) for t in self.targets], dim=-1).tolist()
        rows = [
            (label, ", ".join(f"{t!r} {p:.2f}" for t, p in top[:5]), *row_ranks)
            for label, top, row_ranks in zip(self.labels, self.top_tokens, ranks, strict=True)
        ]
        section.table(["layer", "top 5 (p)", *(f"rank of {n!r}" for n in self.target_names)], rows)
        return page

    def page(self, title: str = "Logit lens") -> Page:
        return self.add_to(Page(title))

    def _repr_html_(self) -> str:
        return self.page().body()


def logit_lens(
    model: HookedModel,
    tokens: str | Tensor,
    *,
    pos: int = -1,
    targets: tuple[str | int, ...] | None = None,
) -> LogitLens:
    """The logit lens over the accumulated residual stream at one position.

    Args:
        model: a hooked model with a final norm and unembedding.
        tokens: one prompt, as text or token ids.
        pos: the position whose next-token prediction is read.
        targets: tokens to track (text or ids; each a single token); default: the model's own
            top prediction.
    """
    from transformer_lens.tools.analysis.logit_lens import logit_readout

    toks = as_tokens(model, tokens)
    where = resolve_pos(pos, toks.shape[1], what="The logit lens reads position")
    sites = [*layer_sites(model, "resid_pre"), Site("resid_post", model.cfg.n_layers - 1)]
    acts = capture(model, toks, sites)
    logits = acts.logits
    assert logits is not None  # capture(..., logits=True) keeps them
    stack = torch.stack([acts[s][0, where] for s in sites])
    with torch.no_grad():
        read = logit_readout(model, stack).values.float()
    if targets is None:
        ids: tuple[int, ...] = (int(logits[0, where].argmax()),)
    else:
        ids = tuple(single_token(model, t) for t in targets)
    probs, top_ids = torch.softmax(read, dim=-1).topk(10, dim=-1)
    top = tuple(
        tuple((token_text(model, int(i)), float(p)) for p, i in zip(ps, row, strict=True))
        for ps, row in zip(probs, top_ids, strict=True)
    )
    return LogitLens(
        tokens=toks,
        str_tokens=str_tokens(model, toks),
        pos=where,
        labels=(*(f"L{layer} pre" for layer in range(model.cfg.n_layers)), "final"),
        logits=read,
        targets=ids,
        target_names=tuple(token_text(model, i) for i in ids),
        top_tokens=top,
    )
