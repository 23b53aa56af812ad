"""Streaming capture: activations of a whole dataset, written batch by batch to safetensors shards.

``capture_dataset(model, inputs, sites, out_dir)`` reads ``inputs`` lazily (a list, a generator of
texts, or a tensor of token ids), runs one batch at a time, and writes each batch to
``out_dir/shard-000042.safetensors`` (``tokens``, ``lengths`` and one tensor per site) before
recording it in ``out_dir/manifest.json``. Memory stays at one batch whatever the dataset size.

Both files are written atomically (temporary file + rename) and the manifest only lists shards
that are complete, so an interruption at any moment leaves a directory that ``capture_dataset``
resumes: it skips the recorded batches (checking that the inputs still hash the same), rewrites
any shard left behind by the interruption, and continues. No batch is written twice or lost.

Prompts of different lengths are right-padded within a batch (``lengths`` says where each ends);
in a causal model padding on the right does not change the activations of the real positions. A
site with a position is read at that position of each prompt (``resid_post.20@-1`` is every
prompt's own last token, not the padding).
"""

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Shaped
from torch import Tensor

from mechlab.activations import SitesSpec, capture, resolve_sites
from mechlab.errors import MSG_CAPTURE_MISMATCH, CaptureStoreError, InputError
from mechlab.files import atomic_write
from mechlab.progress import Progress
from mechlab.sites import PATTERN_KINDS, Site, fit_pos
from mechlab.tokens import require_tokenizer
from mechlab.types import HookedModel

FORMAT = "mechlab-capture/1"
MANIFEST = "manifest.json"
InputsLike = Tensor | Iterable[str] | Iterable[Tensor] | Iterable[Sequence[int]]


@dataclasses.dataclass(frozen=True)
class CaptureProgress:
    """Where a ``capture_dataset`` run is: batches and rows written, of ``total_batches`` if known."""

    batches: int
    rows: int
    total_batches: int | None
    resumed_batches: int

    @property
    def done(self) -> int:
        """Batches written so far (the ``ProgressState`` protocol)."""
        return self.batches

    @property
    def total(self) -> int | None:
        return self.total_batches


def _fingerprint(model: HookedModel) -> str:
    cfg = model.cfg
    fields = [getattr(cfg, k, None) for k in ("model_name", "n_layers", "d_model", "n_heads", "d_vocab")]
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if params is not None else None
    checksum = 0.0 if first is None else float(first.detach().double().sum())
    return hashlib.sha256(repr((fields, round(checksum, 6))).encode()).hexdigest()[:16]


def _row(model: HookedModel, item: Any) -> Tensor:
    if isinstance(item, str):
        require_tokenizer(model, "pass token ids instead of texts.")
        return model.to_tokens(item)[0]
    row = torch.as_tensor(item, dtype=torch.long)
    if row.ndim != 1 or len(row) == 0:
        raise InputError(
            f"Each input must be a text or a non-empty 1-D sequence of ids, got {tuple(row.shape)}."
        )
    return row


def _batches(model: HookedModel, inputs: InputsLike, batch_size: int) -> Iterator[list[Tensor]]:
    batch: list[Tensor] = []
    for item in inputs:
        batch.append(_row(model, item))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pad(rows: list[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(r) for r in rows])
    tokens = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, lengths


def _digest(tokens: Tensor, lengths: Tensor) -> str:
    return hashlib.sha256(tokens.numpy().tobytes() + lengths.numpy().tobytes()).hexdigest()


def _total(inputs: InputsLike, batch_size: int) -> int | None:
    try:
        n = len(inputs)  # type: ignore[arg-type]
    except TypeError:
        return None
    return -(-n // batch_size)


@dataclasses.dataclass(frozen=True)
class CaptureDataset:
    """A capture directory: its manifest, and lazy access to its shards."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def __len__(self) -> int:
        return sum(int(s["rows"]) for s in self.manifest["shards"])

    def shards(self) -> Iterator[dict[str, Tensor]]:
        """Each shard's tensors in order (``tokens``, ``lengths``, one key per site), one at a time."""
        from safetensors.torch import load_file

        for shard in self.manifest["shards"]:
            yield load_file(str(self.directory / shard["file"]))

    def stack(self, site: str) -> Shaped[Tensor, "rows ..."]:
        """All rows of one site (or ``tokens``/``lengths``) in one tensor, right-padded with zeros to
        the longest prompt along every position axis (query and key positions of patterns)."""
        parts = [shard[str(site)] for shard in self.shards()]
        if not parts:
            raise CaptureStoreError(f"{self.directory} holds no shards yet.")
        sizes = {axis: max(int(p.shape[axis]) for p in parts) for axis in _position_axes(str(site))}
        return torch.cat([_pad_to(p, sizes) for p in parts])


def _position_axes(name: str) -> list[int]:
    """The position axes of a stored tensor: ``tokens`` [rows, pos], ``lengths`` none, a site's
    (query and key) position axes after its head/position slicing."""
    if name in ("tokens", "lengths"):
        return [1] if name == "tokens" else []
    site = Site.parse(name)
    full = [2, 3] if site.kind in PATTERN_KINDS else [1]
    removed = [site.pos_axis] if site.pos is not None else []
    if site.head is not None and site.head_axis is not None:
        removed.append(site.head_axis)
    return [a - sum(r < a for r in removed) for a in full if a not in removed]


def _pad_to(part: Tensor, sizes: dict[int, int]) -> Tensor:
    spec: list[int] = []
    for axis in reversed(range(part.ndim)):
        spec += [0, sizes[axis] - int(part.shape[axis]) if axis in sizes else 0]
    return torch.nn.functional.pad(part, spec)


def read_capture(out_dir: str | Path) -> CaptureDataset:
    """Open a directory written by ``capture_dataset``."""
    directory = Path(out_dir)
    path = directory / MANIFEST
    if not path.is_file():
        raise CaptureStoreError(f"{directory} has no {MANIFEST}: it was not written by capture_dataset.")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise CaptureStoreError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}.")
    return CaptureDataset(directory, manifest)


def _start(directory: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: the existing one if it matches ``settings``, else a new one."""
    if not (directory / MANIFEST).is_file():
        return {"format": FORMAT, **settings, "shards": [], "complete": False}
    manifest = read_capture(directory).manifest
    for key, value in settings.items():
        if manifest.get(key) != value:
            what = f"{key} was {manifest.get(key)!r}, now {value!r}"
            raise CaptureStoreError(MSG_CAPTURE_MISMATCH.format(out_dir=directory, what=what))
    return manifest


def capture_dataset(
    model: HookedModel,
    inputs: InputsLike,
    sites: SitesSpec,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    pad_id: int = 0,
    progress: Progress | None = None,
) -> CaptureDataset:
    """Capture ``sites`` for every input, streaming batches to safetensors shards in ``out_dir``.

    Args:
        model: a causal HookedTransformer-protocol model.
        inputs: texts, 1-D token-id sequences, or a ``[n, pos]`` tensor; read lazily.
        sites: as for ``capture``.
        out_dir: created if missing; an existing capture there is resumed.
        batch_size: prompts per forward pass and per shard.
        dtype: store activations in this dtype (e.g. ``torch.float16``); default: as computed.
        pad_id: token id used to right-pad shorter prompts.
        progress: called with a ``CaptureProgress`` (``done``/``total`` batches) after every batch,
            e.g. ``mechlab.RichProgress()``.

    Returns:
        The finished ``CaptureDataset``.

    Raises:
        CaptureStoreError: ``out_dir`` holds a capture of another model, sites, batch size or input.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be ≥ 1, got {batch_size}.")
    if getattr(model.cfg, "attention_dir", "causal") != "causal":
        raise InputError("capture_dataset right-pads prompts, which needs a causal (decoder) model.")
    wanted = resolve_sites(model, sites)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": _fingerprint(model),
        "sites": [str(s) for s in wanted],
        "batch_size": batch_size,
        "dtype": str(dtype) if dtype is not None else None,
    }
    manifest = _start(directory, settings)
    done = list(manifest["shards"])
    resumed, total = len(done), _total(inputs, batch_size)
    rows = sum(int(s["rows"]) for s in done)
    seen = 0
    for index, batch in enumerate(_batches(model, inputs, batch_size)):
        seen = index + 1
        tokens, lengths = _pad(batch, pad_id)
        digest = _digest(tokens, lengths)
        if index < len(done):
            if done[index]["tokens_sha256"] != digest:
                what = f"batch {index} has different tokens than when it was written"
                raise CaptureStoreError(MSG_CAPTURE_MISMATCH.format(out_dir=directory, what=what))
            continue
        done.append(_write_shard(model, directory, index, tokens, lengths, wanted, dtype, digest))
        rows += len(batch)
        _save(directory, {**manifest, "shards": done, "complete": False})
        if progress is not None:
            progress(CaptureProgress(len(done), rows, total, resumed))
    if seen < len(done):
        what = f"it holds {len(done)} batches but these inputs make only {seen}"
        raise CaptureStoreError(MSG_CAPTURE_MISMATCH.format(out_dir=directory, what=what))
    manifest = {**manifest, "shards": done, "complete": True, "rows": rows}
    _save(directory, manifest)
    return CaptureDataset(directory, manifest)


def _write_shard(
    model: HookedModel,
    directory: Path,
    index: int,
    tokens: Tensor,
    lengths: Tensor,
    sites: Sequence[Site],
    dtype: torch.dtype | None,
    digest: str,
) -> dict[str, Any]:
    from safetensors.torch import save

    needed = list(dict.fromkeys(site.whole if site.pos is not None else site for site in sites))
    acts = capture(model, tokens, needed, max_bytes=None, logits=False)
    tensors = {"tokens": tokens, "lengths": lengths}
    for site in sites:
        value = acts[site] if site.pos is None else _per_prompt(acts[site.whole], site, lengths, index)
        tensors[str(site)] = (value if dtype is None else value.to(dtype)).cpu().contiguous()
    name = f"shard-{index:06d}.safetensors"
    atomic_write(directory / name, save(tensors))
    return {"file": name, "index": index, "rows": int(tokens.shape[0]), "tokens_sha256": digest}


def _per_prompt(whole: Tensor, site: Site, lengths: Tensor, batch_index: int) -> Tensor:
    """``site``'s slice of a right-padded batch, its position resolved against each prompt's length."""
    rows = []
    for i, (row, length) in enumerate(zip(whole.split(1), lengths.tolist(), strict=True)):
        what = f"Site {site} (prompt {i} of batch {batch_index}, {length} tokens)"
        pos = fit_pos(int(site.pos or 0), int(length), what, InputError)
        rows.append(row[site.with_(pos=pos).index(row)])
    return torch.cat(rows)


def _save(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1))
