"""Streaming capture: activations of a whole dataset, written batch by batch to safetensors shards.

``capture_dataset(model, inputs, sites, out_dir)`` reads ``inputs`` lazily (a list, a generator of
texts, or a tensor of token ids), runs one batch at a time, and writes each batch to
``out_dir/shard-000042.safetensors`` (``tokens``, ``lengths`` and one tensor per site) before
recording it in ``out_dir/manifest.json``. Memory stays at one batch whatever the dataset size.

Each batch written is one task of an executor (``mechlab.executors``); the driver records a shard
in the manifest once it and every shard before it are on disk. Both files are written atomically
(temporary file + rename) and the manifest only lists shards that are complete, so an interruption
at any moment leaves a directory that ``capture_dataset`` resumes: it skips the recorded batches
(checking that the inputs still hash the same), rewrites any shard left behind by the interruption,
and continues. No batch is written twice or lost.

Every shard's size, modification time and sha256 are recorded in the manifest. A resumed run checks
each shard it skips (size and modification time; the full sha256 with ``verify_shards=True``) and
rewrites one that is missing or changed; reading a capture back checks every shard's sha256 and
the hash of its tokens, and raises ``CorruptCaptureError`` naming the shard.

Prompts of different lengths are right-padded within a batch (``lengths`` says where each ends);
in a causal model padding on the right does not change the activations of the real positions. A
site with a position is read at that position of each prompt (``resid_post.20@-1`` is every
prompt's own last token, not the padding).
"""

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int, Shaped
from torch import Tensor

from mechlab.activations import SitesSpec, capture, resolve_sites
from mechlab.errors import MSG_CAPTURE_MISMATCH, CaptureStoreError, CorruptCaptureError, InputError
from mechlab.executors import Executor, resolve_executor
from mechlab.files import atomic_write, remove_stale, sha256_of
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
        """Each shard's tensors in order (``tokens``, ``lengths``, one key per site), one at a time,
        each checked against the manifest.

        Raises:
            CorruptCaptureError: a shard is missing, or its bytes or tokens are not what was written.
        """
        for shard in self.manifest["shards"]:
            yield _load_shard(self.directory, shard)

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
    """Open a directory written by ``capture_dataset`` (its shards are checked as they are read).

    Raises:
        CaptureStoreError: no manifest there; CorruptCaptureError: a manifest that is not one.
    """
    directory = Path(out_dir)
    path = directory / MANIFEST
    if not path.is_file():
        raise CaptureStoreError(f"{directory} has no {MANIFEST}: it was not written by capture_dataset.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CorruptCaptureError(
            f"{path} is not a readable capture manifest ({type(error).__name__}: {error}). Delete the "
            "directory and capture again, or restore the manifest."
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CaptureStoreError(f"{path} has format {found!r}, expected {FORMAT!r}.")
    if not isinstance(manifest.get("shards"), list):
        raise CorruptCaptureError(f"{path} lists no shards. Delete the directory and capture again.")
    return CaptureDataset(directory, manifest)


def shard_problem(directory: Path, shard: dict[str, Any], *, full: bool) -> str | None:
    """Why a recorded shard is not what was written (``None``: it is): missing, another size, or (when
    its modification time moved, or ``full``) another sha256."""
    path = directory / str(shard.get("file", ""))
    if not path.is_file():
        return f"{path.name} is missing"
    status = path.stat()
    if "sha256" not in shard:
        return None  # written before checksums were recorded: its tokens are checked when read
    if status.st_size != shard.get("bytes"):
        return f"{path.name} has {status.st_size:,} bytes, {shard.get('bytes'):,} were written"
    if full or status.st_mtime_ns != shard.get("mtime_ns"):
        if sha256_of(path) != shard["sha256"]:
            return f"{path.name} does not hold the bytes that were written (sha256 differs)"
    return None


def _load_shard(directory: Path, shard: dict[str, Any]) -> dict[str, Tensor]:
    """A recorded shard's tensors, its bytes and tokens checked against the manifest."""
    from safetensors.torch import load

    path = directory / str(shard["file"])
    fix = "Run capture_dataset again with the same inputs: it rewrites damaged shards."
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CorruptCaptureError(
            f"Capture {directory}: {path.name} cannot be read ({error.strerror}). {fix}"
        ) from error
    if "sha256" in shard and hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise CorruptCaptureError(
            f"Capture {directory}: {path.name} does not hold the bytes that were written "
            f"({len(data):,} bytes, sha256 differs). {fix}"
        )
    try:
        tensors = load(data)
        digest = _digest(tensors["tokens"], tensors["lengths"])
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise CorruptCaptureError(
            f"Capture {directory}: {path.name} cannot be read ({error}). {fix}"
        ) from error
    if digest != shard.get("tokens_sha256"):
        raise CorruptCaptureError(
            f"Capture {directory}: {path.name} holds other tokens than were written. {fix}"
        )
    return tensors


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
    verify_shards: bool = False,
    executor: Executor | str | None = None,
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
        verify_shards: when resuming, hash every recorded shard (default: only those whose size or
            modification time changed); a damaged shard is rewritten either way.
        executor: writes the shards, one task per batch, drawn from the inputs as it starts them
            (``mechlab.executors``; default: in this process, in order).

    Returns:
        The finished ``CaptureDataset``.

    Raises:
        CaptureStoreError: ``out_dir`` holds a capture of another model, sites, batch size or input,
            or the disk filled up (what was written is kept: run again to resume).
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
    remove_stale(directory, ".shard-")  # temporary shards of a run that was killed mid-write
    resumed, total = len(done), _total(inputs, batch_size)
    rows = sum(int(s["rows"]) for s in done)
    seen = 0
    waiting: dict[int, dict[str, Any]] = {}  # new shards on disk, waiting for a shard before them

    def tasks() -> Iterator[Shard]:
        nonlocal seen
        for index, batch in enumerate(_batches(model, inputs, batch_size)):
            seen = index + 1
            tokens, lengths = _pad(batch, pad_id)
            shard = Shard(index, tokens, lengths, _digest(tokens, lengths))
            if index < resumed:
                if done[index]["tokens_sha256"] != shard.digest:
                    what = f"batch {index} has different tokens than when it was written"
                    raise CaptureStoreError(MSG_CAPTURE_MISMATCH.format(out_dir=directory, what=what))
                if shard_problem(directory, done[index], full=verify_shards) is None:
                    continue
            yield shard

    def arrived(_: int, entry: dict[str, Any]) -> None:
        nonlocal rows
        index, before = int(entry["index"]), len(done)
        if index < resumed:
            done[index] = entry  # a damaged shard, rewritten
        else:
            waiting[index] = entry
        while len(done) in waiting:
            done.append(waiting.pop(len(done)))
            rows += int(done[-1]["rows"])
        if index < resumed or len(done) > before:
            _guarded(directory, MANIFEST, _save, directory, {**manifest, "shards": done, "complete": False})
        if len(done) > before and progress is not None:
            progress(CaptureProgress(len(done), rows, total, resumed))

    writer = ShardWriter(model, directory, tuple(wanted), dtype)
    resolve_executor(executor).map(writer, tasks(), on_result=arrived)
    if seen < resumed:
        what = f"it holds {resumed} batches but these inputs make only {seen}"
        raise CaptureStoreError(MSG_CAPTURE_MISMATCH.format(out_dir=directory, what=what))
    manifest = {**manifest, "shards": done, "complete": True, "rows": rows}
    _guarded(directory, MANIFEST, _save, directory, manifest)
    return CaptureDataset(directory, manifest)


@dataclasses.dataclass(frozen=True)
class Shard:
    """A task: batch ``index``'s right-padded tokens, their lengths and the digest of both."""

    index: int
    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    digest: str


@dataclasses.dataclass(frozen=True)
class ShardWriter:
    """The work of every ``capture_dataset`` task: capture a batch and write its shard.

    Returns the shard's manifest entry; an ``OSError`` (a full disk) becomes a ``CaptureStoreError``.
    """

    model: HookedModel
    directory: Path
    sites: tuple[Site, ...]
    dtype: torch.dtype | None

    def __call__(self, shard: Shard) -> dict[str, Any]:
        return _guarded(
            self.directory,
            f"shard {shard.index}",
            _write_shard,
            self.model,
            self.directory,
            shard.index,
            shard.tokens,
            shard.lengths,
            self.sites,
            self.dtype,
            shard.digest,
        )


MSG_DISK = (
    "Capture {directory}: writing {what} failed ({error}). Everything recorded before it is kept; free "
    "space (or fix the directory) and run capture_dataset again with the same inputs to resume."
)


def _guarded(directory: Path, what: str, write: Callable[..., Any], *args: Any) -> Any:
    """``write(*args)``, with an ``OSError`` (a full disk) turned into a ``CaptureStoreError``."""
    try:
        return write(*args)
    except OSError as error:
        raise CaptureStoreError(MSG_DISK.format(directory=directory, what=what, error=error)) from error


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
    data = save(tensors)
    path = atomic_write(directory / name, data)
    return {
        "file": name,
        "index": index,
        "rows": int(tokens.shape[0]),
        "tokens_sha256": digest,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "mtime_ns": path.stat().st_mtime_ns,
    }


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
