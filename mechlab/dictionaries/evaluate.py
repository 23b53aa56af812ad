"""How good an SAE is, on held-out tokens: reconstruction, sparsity, and what the model loses.

- **Fraction of variance explained** (FVE): ``1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖²`` over every
  evaluated token.
- **L0**: mean number of non-zero latents per token. **Dead** latents never fire on the evaluated
  tokens; **dense** latents fire on more than ``dense_threshold`` of them.
- **Loss recovered**: the model's next-token cross-entropy with the SAE's reconstruction spliced in
  at its site (``ce_sae``), compared with the clean run (``ce_clean``) and with the site zero-ablated
  (``ce_zero``): ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``; 1 means nothing lost.

The same tokens are evaluated as trained on: positions from ``skip_first`` on, minus outlier rows
(norm above ``outlier_ratio`` times the batch median: attention sinks), which are left untouched in
the spliced and ablated runs and counted in ``n_outliers``. A transcoder reads its ``site`` and is
spliced in, and judged, at its ``site_out``.
"""

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from mechlab.dictionaries.harvest import flatten_site, outlier_mask
from mechlab.dictionaries.sae import SAE
from mechlab.errors import InputError
from mechlab.hooks import SiteHook, hooked, recorder
from mechlab.progress import Progress, Step
from mechlab.sites import Site
from mechlab.types import HookedModel


@dataclasses.dataclass(frozen=True)
class SAEEvaluation:
    """An SAE's evaluation on held-out tokens (see the module docstring for each figure)."""

    fve: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    mse: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    loss_recovered: float
    n_tokens: int
    n_outliers: int
    frequency: Float[Tensor, " d_sae"] = dataclasses.field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The figures as plain numbers (latent frequencies left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "frequency"}

    def summary(self) -> str:
        """A few lines for a terminal."""
        return (
            f"FVE {self.fve:.4f} · L0 {self.l0:.1f} · dead {100 * self.dead_fraction:.2f}% · "
            f"dense {100 * self.dense_fraction:.2f}%\n"
            f"CE clean {self.ce_clean:.4f} · with SAE {self.ce_sae:.4f} · zero-ablated {self.ce_zero:.4f} "
            f"→ loss recovered {self.loss_recovered:.4f}\n"
            f"{self.n_tokens:,} tokens ({self.n_outliers:,} outlier rows left out)"
        )


def _next_token_ce(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], skip: int
) -> Tensor:
    """Summed cross-entropy of predicting ``tokens[:, p + 1]`` at positions ``p >= skip``."""
    predicted = logits[:, skip:-1].float()
    return F.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]), tokens[:, skip + 1 :].reshape(-1), reduction="sum"
    )


def _splicer(new: Tensor, keep: Tensor, skip_first: int) -> SiteHook:
    """A hook writing ``new`` (``[batch, pos - skip_first, width]``) where ``keep`` is true."""

    def splice(act: Tensor, site: Site) -> Tensor:
        flat = flatten_site(act).clone()
        body = flat[:, skip_first:]  # a view: writing it writes ``flat``
        body[keep] = new[keep].to(flat.dtype)
        return flat.reshape(act.shape)

    return splice


@torch.no_grad()
def evaluate_sae(
    model: HookedModel,
    sae: SAE,
    *,
    tokens: Int[Tensor, "n_seq context"] | None = None,
    n_tokens: int = 8192,
    context: int = 128,
    batch_size: int = 8,
    skip_first: int = 1,
    outlier_ratio: float | None = 10.0,
    dense_threshold: float = 0.1,
    seed: int = 0,
    progress: Progress | None = None,
) -> SAEEvaluation:
    """Evaluate ``sae`` on ``model`` over held-out text.

    Args:
        model: the model the SAE reads.
        sae: the SAE (or transcoder).
        tokens: ``[n_seq, context]`` windows; default ``n_tokens`` of the corpus's held-out split.
        n_tokens, context: the default windows' size.
        batch_size: windows per forward pass (three passes each: clean, spliced, zero-ablated).
        skip_first: leading positions of each window not evaluated (and not spliced).
        outlier_ratio: rows whose norm exceeds this multiple of the batch median are left out.
        dense_threshold: a latent firing on more than this fraction of tokens is dense.
        seed: the windows' order.
        progress: called with a ``Step`` after each batch.
    """
    if tokens is None:
        from mechlab.dictionaries.corpus import corpus_tokens

        tokens = corpus_tokens(model, n_tokens, context=context, split="heldout", seed=seed)
    if tokens.ndim != 2 or tokens.shape[1] < skip_first + 2:
        raise InputError(f"evaluate_sae needs [n_seq, context] windows with context ≥ {skip_first + 2}.")
    read, write = Site.parse(sae.cfg.site), Site.parse(sae.cfg.site_out or sae.cfg.site)
    device = sae.device
    sums = {"sq_err": 0.0, "sq_norm": 0.0, "l0": 0.0, "ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0}
    total = torch.zeros(sae.cfg.width_out, dtype=torch.float64)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    n_rows = n_outliers = n_predicted = 0
    batches = range(0, tokens.shape[0], batch_size)
    for done, start in enumerate(batches, 1):
        batch = tokens[start : start + batch_size]
        seen: dict[Site, Tensor] = {}
        with hooked(model, [(site, recorder(seen)) for site in dict.fromkeys([read, write])]):
            clean_logits = model(batch)
        x = flatten_site(seen[read])[:, skip_first:].to(device).float()
        y = flatten_site(seen[write])[:, skip_first:].to(device).float()
        keep = outlier_mask(x.reshape(-1, x.shape[-1]), outlier_ratio).reshape(x.shape[:2])
        z = sae.encode(x)
        y_hat = sae.decode(z, like=x)
        if not torch.isfinite(y_hat).all():
            raise InputError(f"The SAE's reconstruction at {write} holds NaN or infinite values.")
        rows_y, rows_hat, rows_z = y[keep], y_hat[keep], z[keep]
        sums["sq_err"] += float((rows_hat - rows_y).pow(2).sum())
        sums["sq_norm"] += float(rows_y.double().pow(2).sum())
        total += rows_y.double().sum(0).cpu()
        active = rows_z > 0
        sums["l0"] += float(active.sum())
        fired += active.double().sum(0).cpu()
        n_rows += int(keep.sum())
        n_outliers += int((~keep).sum())
        sums["ce_clean"] += float(_next_token_ce(clean_logits, batch, skip_first))
        for name, new in (("ce_sae", y_hat), ("ce_zero", torch.zeros_like(y_hat))):
            with hooked(model, [(write, _splicer(new, keep, skip_first))]):
                sums[name] += float(_next_token_ce(model(batch), batch, skip_first))
        n_predicted += batch.shape[0] * (batch.shape[1] - skip_first - 1)
        if progress is not None:
            progress(Step(done, len(batches)))
    if n_rows == 0:
        raise InputError("No token was evaluated (every row was an outlier or skipped).")
    mean = total / n_rows
    variance = sums["sq_norm"] - n_rows * float(mean.pow(2).sum())
    ce = {name: sums[name] / n_predicted for name in ("ce_clean", "ce_sae", "ce_zero")}
    span = ce["ce_zero"] - ce["ce_clean"]
    frequency = (fired / n_rows).float()
    return SAEEvaluation(
        fve=1 - sums["sq_err"] / max(variance, 1e-12),
        l0=sums["l0"] / n_rows,
        dead_fraction=float((frequency == 0).float().mean()),
        dense_fraction=float((frequency > dense_threshold).float().mean()),
        mse=sums["sq_err"] / n_rows,
        loss_recovered=(ce["ce_zero"] - ce["ce_sae"]) / span if span != 0 else float("nan"),
        n_tokens=n_rows,
        n_outliers=n_outliers,
        frequency=frequency,
        **ce,
    )
