"""Activations for training, streamed from the model into a bounded, shuffled buffer.

Training an SAE needs millions of activation vectors in random order. Storing them all is costly
(SmolLM2's residual stream: 2.3 KB a token in float32), so ``ActivationBuffer`` keeps ``capacity``
rows in memory: it fills up by running the model on token windows (``mechlab.capture``, which stops
the forward pass after the site's layer), shuffles, hands out half of its rows in batches, refills
that half with fresh activations and shuffles again (SAELens's mixing buffer). Memory stays at
``capacity`` rows, and rows from different windows are mixed within each batch.

Each window's first ``skip_first`` positions are dropped: in many models (SmolLM2 included) the
first position is an attention sink whose residual norm is tens of times the others', which an SAE
would spend its capacity on.

Any site kind works: the activation's trailing axes after ``pos`` are flattened (``z``:
``head d_head -> (head d_head)``). For a transcoder, two sites are read and each row holds both.

The buffer's whole state (rows, cursor, RNG, position in the token stream) is ``state_dict()``, so
training resumes mid-stream exactly where it stopped.

``autocast="bfloat16"`` runs the model's forward passes under ``torch.autocast`` (matrix products in
bfloat16; AMX CPUs and GPUs run them several times faster). On SmolLM2's ``resid_post.15`` such rows
reproduce the float32 ones to a fraction of variance explained of 0.99987, far below an SAE's error.
"""

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlab.activations import capture
from mechlab.errors import InputError
from mechlab.progress import Progress
from mechlab.shards import CaptureDataset, capture_dataset
from mechlab.sites import Site
from mechlab.types import HookedModel


def flatten_site(act: Tensor) -> Float[Tensor, "batch pos width"]:
    """A hooked activation ``[batch, pos, ...]`` with its trailing axes flattened into one width."""
    if act.ndim == 2:  # a site sliced to one position
        return act[:, None, :]
    return act.reshape(act.shape[0], act.shape[1], -1)


def outlier_mask(rows: Float[Tensor, "rows width"], ratio: float | None) -> Bool[Tensor, " rows"]:
    """True for rows to keep: norm at most ``ratio`` times the median row norm (all if ``ratio`` is None).

    Attention-sink tokens carry residual norms ~100x the median (SmolLM2: 0.1% of tokens past the
    first position); left in, they dominate the squared error and the variance.
    """
    if ratio is None:
        return torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    norms = rows.norm(dim=-1)
    return norms <= ratio * norms.median()


def site_activations(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    sites: Sequence[Site],
    *,
    skip_first: int = 1,
    outlier_ratio: float | None = None,
) -> Float[Tensor, "rows width"]:
    """The activations at ``sites`` for every token of ``tokens`` after the first ``skip_first``
    positions, as rows (several sites: concatenated along the width); rows whose first site's norm
    exceeds ``outlier_ratio`` times the median are dropped (``outlier_mask``)."""
    acts = capture(model, tokens, list(sites), logits=False, max_bytes=None)
    return rows_of([acts[site] for site in sites], sites, skip_first, outlier_ratio)


def rows_of(
    acts: Sequence[Tensor], sites: Sequence[Site], skip_first: int, outlier_ratio: float | None
) -> Float[Tensor, "rows width"]:
    """Hooked activations (one per site, ``[batch, pos, ...]``) as filtered rows (``site_activations``)."""
    # A site sliced to one position (``resid_post.6@-1``) keeps that position.
    parts = [
        flatten_site(act)[:, (skip_first if site.pos is None else 0) :]
        for act, site in zip(acts, sites, strict=True)
    ]
    rows = einops.rearrange(torch.cat(parts, dim=-1), "batch pos width -> (batch pos) width").float()
    width = flatten_site(acts[0]).shape[-1]
    return rows[outlier_mask(rows[:, :width], outlier_ratio)]


AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def autocast(model: HookedModel, dtype: str | None) -> Iterator[None]:
    """Run ``model``'s forward passes under ``torch.autocast`` to ``dtype`` (``None``: unchanged)."""
    if dtype is None:
        yield
        return
    if dtype not in AUTOCAST:
        raise InputError(f"autocast must be one of {', '.join(AUTOCAST)} or None; got {dtype!r}.")
    with torch.autocast(device_type=model_device(model).type, dtype=AUTOCAST[dtype]):
        yield


def harvest_to_disk(
    model: HookedModel,
    tokens: Int[Tensor, "n_seq context"],
    sites: Sequence[Site],
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float16,
    autocast_dtype: str | None = None,
    progress: Progress | None = None,
) -> CaptureDataset:
    """Capture ``sites`` for every window into safetensors shards (``capture_dataset``: bounded
    memory, resumable after an interruption, checked on reading back); ``autocast_dtype``: run the
    model under ``autocast`` to it."""
    with autocast(model, autocast_dtype):
        return capture_dataset(
            model, tokens, list(sites), out_dir, batch_size=batch_size, dtype=dtype, progress=progress
        )


def rows_from_capture(
    dataset: CaptureDataset, sites: Sequence[Site], *, skip_first: int = 1, outlier_ratio: float | None = None
) -> Float[Tensor, "rows width"]:
    """A capture's activations as one ``[rows, width]`` float32 tensor, filtered like ``site_activations``."""
    parts: list[Tensor] = []
    for shard in dataset.shards():
        acts = [shard[str(site)].float() for site in sites]
        parts.append(rows_of(acts, sites, skip_first, outlier_ratio))
    if not parts:
        raise InputError(f"{dataset.directory} holds no shards yet.")
    return torch.cat(parts)


@runtime_checkable
class BatchSource(Protocol):
    """What training draws rows from: an ``ActivationBuffer`` or a ``TensorBuffer``."""

    def next_batch(self, batch_size: int) -> Tensor: ...

    def peek(self) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorBuffer:
    """Rows of a fixed tensor in a fresh seeded order each epoch (toy data, precomputed activations)."""

    def __init__(self, data: Float[Tensor, "rows width"], *, seed: int = 0) -> None:
        if data.ndim != 2 or data.shape[0] < 1:
            raise InputError(f"TensorBuffer needs a [rows, width] tensor; got shape {tuple(data.shape)}.")
        self.data = data
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(data.shape[0], generator=self.generator)
        self.cursor = 0

    def next_batch(self, batch_size: int) -> Float[Tensor, "batch width"]:
        """The next ``batch_size`` rows of this epoch's order (a new order when it runs out)."""
        if batch_size > self.data.shape[0]:
            raise InputError(f"batch_size {batch_size} exceeds the {self.data.shape[0]} rows available.")
        if self.cursor + batch_size > self.order.numel():
            self.order = torch.randperm(self.data.shape[0], generator=self.generator)
            self.cursor = 0
        rows = self.data[self.order[self.cursor : self.cursor + batch_size].to(self.data.device)]
        self.cursor += batch_size
        return rows

    def peek(self) -> Float[Tensor, "rows width"]:
        """All rows."""
        return self.data

    def state_dict(self) -> dict[str, Any]:
        """The order, cursor and RNG (the data itself is the caller's)."""
        return {"order": self.order, "cursor": self.cursor, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``."""
        self.order = state["order"]
        self.cursor = int(state["cursor"])
        self.generator.set_state(state["generator"])


class ActivationBuffer:
    """A shuffling buffer of activation rows refilled from the model as it is drained.

    Args:
        model: the model to run.
        tokens: ``[n_seq, context]`` windows to read, in order, cycling when exhausted.
        sites: the site(s) whose activations make a row.
        capacity: rows held in memory (bounded memory: ``capacity * width * 4`` bytes).
        model_batch: windows per forward pass.
        skip_first: positions dropped at the start of each window.
        outlier_ratio: drop rows whose norm exceeds this multiple of the median (``outlier_mask``).
        seed: seeds the shuffles.
        autocast_dtype: run the model under ``autocast`` to this dtype (``"bfloat16"``).
    """

    def __init__(
        self,
        model: HookedModel,
        tokens: Int[Tensor, "n_seq context"],
        sites: Sequence[Site],
        *,
        capacity: int = 1 << 15,
        model_batch: int = 16,
        skip_first: int = 1,
        outlier_ratio: float | None = None,
        seed: int = 0,
        autocast_dtype: str | None = None,
    ) -> None:
        if tokens.ndim != 2 or tokens.shape[1] <= skip_first:
            raise InputError(
                f"ActivationBuffer needs token windows [n_seq, context] longer than skip_first={skip_first}; "
                f"got shape {tuple(tokens.shape)}."
            )
        if capacity < 2:
            raise InputError(f"capacity must be at least 2 rows; got {capacity}.")
        self.model = model
        self.tokens = tokens
        self.sites = list(sites)
        self.capacity = capacity
        self.model_batch = model_batch
        self.skip_first = skip_first
        self.outlier_ratio = outlier_ratio
        self.autocast_dtype = autocast_dtype
        self.generator = torch.Generator().manual_seed(seed)
        self.next_window = 0  # index of the next window to run (modulo n_seq)
        self.windows_read = 0
        self.rows: Tensor | None = None
        self.cursor = 0  # rows of the served half handed out so far

    @property
    def tokens_per_window(self) -> int:
        """Rows one window contributes."""
        return int(self.tokens.shape[1]) - self.skip_first

    def _harvest(self, n_rows: int) -> Float[Tensor, "rows width"]:
        parts: list[Tensor] = []
        have = 0
        device = model_device(self.model)
        while have < n_rows:
            n = self.tokens.shape[0]
            index = torch.arange(self.next_window, self.next_window + self.model_batch) % n
            self.next_window = int(index[-1]) + 1
            self.windows_read += len(index)
            with autocast(self.model, self.autocast_dtype):
                rows = site_activations(
                    self.model,
                    self.tokens[index].to(device),
                    self.sites,
                    skip_first=self.skip_first,
                    outlier_ratio=self.outlier_ratio,
                )
            if not torch.isfinite(rows).all():
                raise InputError(f"The model produced NaN or infinite activations at {self.sites}.")
            parts.append(rows)
            have += rows.shape[0]
        return torch.cat(parts)[:n_rows]

    def _shuffle(self) -> None:
        assert self.rows is not None
        order = torch.randperm(self.rows.shape[0], generator=self.generator).to(self.rows.device)
        self.rows = self.rows[order]

    def next_batch(self, batch_size: int) -> Float[Tensor, "batch width"]:
        """``batch_size`` rows, each handed out once per pass through the buffer."""
        half = self.capacity // 2
        if batch_size > half:
            raise InputError(
                f"batch_size {batch_size} exceeds half the buffer ({half} rows); raise capacity."
            )
        if self.rows is None:
            self.rows = self._harvest(self.capacity)
            self._shuffle()
            self.cursor = 0
        if self.cursor + batch_size > half:
            self.rows[:half] = self._harvest(half).to(self.rows.device)
            self._shuffle()
            self.cursor = 0
        batch = self.rows[self.cursor : self.cursor + batch_size]
        self.cursor += batch_size
        return batch

    def peek(self) -> Float[Tensor, "rows width"]:
        """The buffer's rows (filling it first), for statistics such as the mean norm."""
        if self.rows is None:
            self.rows = self._harvest(self.capacity)
            self._shuffle()
            self.cursor = 0
        return self.rows

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this buffer is."""
        return {
            "rows": self.rows,
            "cursor": self.cursor,
            "next_window": self.next_window,
            "windows_read": self.windows_read,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``."""
        self.rows = state["rows"]
        self.cursor = int(state["cursor"])
        self.next_window = int(state["next_window"])
        self.windows_read = int(state["windows_read"])
        self.generator.set_state(state["generator"])


def model_device(model: Any) -> torch.device:
    """Where ``model``'s first parameter lives (CPU for a model without parameters)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")
