"""Baking a directional ablation into a GGUF file that llama.cpp and Ollama run as it is.

Directional ablation removes a unit direction ``u`` from everything written into the residual
stream: ``x ← x - (x·u) u``. Nothing else writes there, so editing the writers once does the same
for every prompt (Arditi et al. 2024, "weight orthogonalization"):

- a matrix whose outputs are added to the residual stream (attention output, MLP down) becomes
  ``W' = (I - u uᵀ) W``. GGUF stores it as ``d_model`` rows of its input width (``ne0`` = input,
  ``ne1`` = output), so the edit mixes rows: ``W' = W - u ⊗ (uᵀ W)``;
- a bias on those outputs becomes ``b - (b·u) u``;
- each row of an embedding (one ``d_model`` vector per token or position) becomes ``e - (e·u) u``.

Mean ablation (``values``, from ``mechlab.fix.ablation.mean_values``) keeps a constant ``μ`` along
``u`` per writer: embedding rows become ``e - (e·u) u + μ u``, and each output matrix gets the bias
``μ u`` (or its bias becomes ``b - (b·u) u + μ u``). llama.cpp's llama graph adds
``blk.N.attn_output.bias`` and ``blk.N.ffn_down.bias`` when a file has them (checked: a bias added to
SmolLM2's file moves llama.cpp's logits), and so does Ollama's (its ``nn.Linear`` adds a ``bias``
tensor where present); the architectures whose graphs are not known to read them are refused.

llama.cpp's Q/K row permutation touches only the query and key matrices, which read the residual
stream and are left alone. A tied output head reads the residual stream through ``token_embd``:
editing that tensor would also edit the unembedding, which the ablation leaves as it is, so the
original ``token_embd`` is kept as a separate ``output.weight`` (llama.cpp loads one where present).

The file is streamed: each tensor is copied or edited in blocks of rows; the header's metadata is
copied byte for byte, and so is every tensor that is not edited. Edited tensors are written in
their original type (``mechlab.fix.quantize`` says who writes which type, and the fallback). A
4-bit grid is coarser than the edit itself (on SmolLM2's Q4_1 matrices plain re-rounding keeps about
half of ``uᵀW``), so quantized matrices are also rounded row by row with the error along ``u``
carried to the rows not yet rounded, and the rounding that keeps less is written (about 1-2% of
``uᵀW`` is left on SmolLM2); embeddings are re-projected a few times. What no rounding avoids is the
rounding error itself: on a 4-bit grid it is as large as the edit (``BakeResult.noise``), so a
4-bit file baked in its own type differs from the ablated model by more than its original differed
from the unablated one. ``write_type="Q8_0"`` keeps the edit faithfully at 8.5 bits per weight.
"""

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from jaxtyping import Float
from torch import Tensor

from mechlab.errors import (
    MSG_BAKE_ARCH,
    MSG_BAKE_SAME_FILE,
    MSG_DIRECTION_WIDTH,
    MSG_LAYER_RANGE,
    CorruptModelError,
    InputError,
    UnsupportedArchitectureError,
)
from mechlab.files import atomic_dir_sibling, check_target
from mechlab.fix import quantize as quant
from mechlab.fix.gguf_file import Entry, Layout, copy, pad, read_layout, write_header
from mechlab.models.precision import check_disk
from mechlab.sites import Site

_ROWS = 4096  # embedding rows edited at a time (an 8B model: 4096 rows × 4096 in float64 = 128 MiB)
NOISY = 0.5  # rounding error above this multiple of the edit: the summary suggests a finer type


@dataclasses.dataclass(frozen=True)
class WriteBack:
    """The tensors through which an architecture writes into the residual stream (llama.cpp names).

    ``matrices`` and ``biases`` are per-block templates (``{n}`` the block); ``embeddings`` are
    global. ``unembedding`` is the output head's name, absent when the file ties it to ``token_embd``.
    ``kinds`` and ``embedding_kinds`` are mechlab's sites for ``matrices`` and ``embeddings``, in order.
    ``output_biases``: the runtime adds ``<matrix>.bias`` when the file has one (mean ablation needs it).
    """

    matrices: tuple[str, ...] = ("blk.{n}.attn_output.weight", "blk.{n}.ffn_down.weight")
    biases: tuple[str, ...] = ()
    embeddings: tuple[str, ...] = ("token_embd.weight",)
    unembedding: str = "output.weight"
    kinds: tuple[str, ...] = ("attn_out", "mlp_out")
    embedding_kinds: tuple[str, ...] = ("embed", "pos_embed")
    output_biases: bool = False


_DEFAULT = WriteBack()
# Architectures whose llama.cpp graph adds the attention output and the MLP down projection straight
# to the residual stream, and loads a separate output.weight when the file has one.
WRITE_BACK: dict[str, WriteBack] = {
    "llama": dataclasses.replace(_DEFAULT, output_biases=True),
    "mistral": _DEFAULT,
    "qwen2": _DEFAULT,
    "qwen3": _DEFAULT,
    "phi3": _DEFAULT,
    "gpt2": WriteBack(
        biases=("blk.{n}.attn_output.bias", "blk.{n}.ffn_down.bias"),
        embeddings=("token_embd.weight", "position_embd.weight"),
        output_biases=True,
    ),
}
# Why some architectures cannot be baked exactly (the rest: mechlab has no table for them).
NOT_BAKEABLE = {
    "gemma": "llama.cpp's Gemma graph always reads its output head from token_embd, so the embedding "
    "cannot be edited without editing the unembedding",
    "gemma2": "a norm after the attention output and after the MLP rescales what they write, so "
    "orthogonal output matrices still write along the direction",
    "gemma3": "a norm after the attention output and after the MLP rescales what they write, so "
    "orthogonal output matrices still write along the direction",
}


@dataclasses.dataclass(frozen=True)
class TensorEdit:
    """One edited tensor: its name, the type it had and the type written, and who wrote it."""

    name: str
    source_type: str
    written_type: str
    writer: str  # "gguf-py", "llama.cpp", "copy" (a tensor added as a byte copy) or "bias" (added)
    requested: bool = False  # written_type was asked for (``write_type``)

    @property
    def fell_back(self) -> bool:
        added = self.writer in ("copy", "bias")
        return self.source_type != self.written_type and not added and not self.requested


@dataclasses.dataclass(frozen=True, eq=False)
class BakeResult:
    """A GGUF file with a direction projected out of its residual-stream writers.

    Attributes:
        source, path: the original file and the file written.
        architecture: ``general.architecture``.
        layers: the blocks whose writers were edited; ``embeddings`` whether the embeddings were.
        edits: every tensor written anew (edited, or added as a copy).
        residual: ``|uᵀW'| / |uᵀW|`` after rounding, the largest over edited matrices (0 is exact).
        noise: ``|W' - (I - uuᵀ)W| / |uuᵀW|``, the rounding error as a multiple of the edit itself,
            over all edited matrices (near 0 in F32; about 1 where the grid is coarser than the edit).
        seconds, n_bytes: time taken and the new file's size.
    """

    source: Path
    path: Path
    architecture: str
    layers: tuple[int, ...]
    embeddings: bool
    edits: tuple[TensorEdit, ...]
    residual: float
    noise: float
    seconds: float
    n_bytes: int

    def fallbacks(self) -> list[TensorEdit]:
        return [e for e in self.edits if e.fell_back]

    def summary(self) -> str:
        edited = [e for e in self.edits if e.writer not in ("copy", "bias")]
        types = sorted({f"{e.source_type}→{e.written_type} ({e.writer})" for e in edited})
        added = [e.name for e in self.edits if e.writer == "copy"]
        biases = sum(e.writer == "bias" for e in self.edits)
        fallback = self.fallbacks()
        text = (
            f"Wrote {self.path} ({self.n_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s: the direction "
            f"projected out of {len(edited)} tensors of "
            f"{len(self.layers)} blocks{' and the embeddings' if self.embeddings else ''} "
            f"[{', '.join(types)}]; largest remaining component after rounding {self.residual:.2%}."
        )
        if biases:
            text += f" Added {biases} F32 output biases (mean ablation: the writers' mean along it)."
        if added:
            text += f" Added {', '.join(added)} (the original token_embd, so the output head is unchanged)."
        if fallback:
            text += (
                f" {len(fallback)} tensors could not be written in their type and fell back to "
                f"{fallback[0].written_type}."
            )
        if self.noise > NOISY:
            text += (
                f" The rounding error is {self.noise:.2f}× the edit itself: the type's grid is coarser "
                "than the edit, so the file differs from the ablated model by more than the ablation "
                "does in places; write_type='Q8_0' (--type Q8_0) writes the edited tensors faithfully."
            )
        return text

    def modelfile(self) -> str:
        """An Ollama Modelfile that runs the baked file (``ollama create NAME -f Modelfile``)."""
        return f"FROM {self.path.resolve()}\n"

    def commands(self, name: str = "fixed") -> list[str]:
        """Shell commands that run the baked file in Ollama and in llama.cpp."""
        return [
            f"ollama create {name} -f Modelfile   # Modelfile: FROM {self.path.resolve()}",
            f"ollama run {name}",
            f"llama-cli -m {self.path.resolve()} -p 'The nurse was tired because' -n 16",
        ]


def _unit(direction: Tensor, width: int) -> np.ndarray:
    if direction.ndim != 1 or direction.shape[0] != width:
        raise InputError(MSG_DIRECTION_WIDTH.format(shape=tuple(direction.shape), d_model=width))
    u = direction.detach().double().cpu().numpy()
    norm = float(np.linalg.norm(u))
    if not np.isfinite(norm) or norm == 0:
        raise InputError(f"The direction must be a finite, non-zero vector; its norm is {norm}.")
    return np.asarray(u / norm)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``bake`` will write, decided before it writes anything.

    Attributes:
        layout: the source file's layout.
        u: the unit direction.
        roles: each tensor to edit → ``"matrix"``, ``"bias"``, ``"embedding"`` or ``"new bias"`` (a
            bias the file lacks, added for mean ablation).
        values: each edited bias or embedding → the component along ``u`` it keeps (mean ablation).
        entries: every tensor of the new file, in order, with the type and size it will have.
        writers: each edited tensor → who writes its type (``quantize.writer_for``).
        add_output: whether ``output.weight`` is added (a copy of the original ``token_embd``).
        layers: the blocks whose writers are edited.
    """

    layout: Layout
    u: np.ndarray
    roles: dict[str, str]
    values: dict[str, float]
    entries: tuple[Entry, ...]
    writers: dict[str, str]
    add_output: bool
    layers: tuple[int, ...]


def plan(
    source: Path,
    direction: Float[Tensor, " d_model"],
    *,
    layers: Sequence[int] | None = None,
    embeddings: bool = True,
    write_type: str | None = None,
    values: Mapping[Site, float] | None = None,
) -> Plan:
    """Everything ``bake`` checks before it writes: the file, its architecture, the direction's width,
    the layers, and the type each edited tensor will be written in.

    Raises:
        CorruptModelError: the file is not a readable GGUF file, or lacks a tensor it should have.
        UnsupportedArchitectureError: mechlab cannot map the architecture's residual writers.
        InputError: a direction of the wrong width, a layer out of range, or ``values`` for writers
            not edited or for an architecture whose runtime adds no output biases.
    """
    layout = read_layout(Path(source))
    arch = str(layout.metadata.get("general.architecture", "?"))
    table = WRITE_BACK.get(arch)
    if table is None:
        reason = NOT_BAKEABLE.get(
            arch, "mechlab has no table of the tensors it writes the residual stream with"
        )
        raise UnsupportedArchitectureError(
            MSG_BAKE_ARCH.format(arch=arch, reason=reason, supported=", ".join(sorted(WRITE_BACK)))
        )
    n_layers, width = layout.number(f"{arch}.block_count"), layout.number(f"{arch}.embedding_length")
    u = _unit(direction, width)
    chosen = tuple(range(n_layers)) if layers is None else tuple(sorted(set(layers)))
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad or not chosen:
        raise InputError(MSG_LAYER_RANGE.format(layers=bad or "none", n_layers=n_layers, last=n_layers - 1))
    roles: dict[str, str] = {}
    for layer in chosen:
        roles.update({t.format(n=layer): "matrix" for t in table.matrices})
        roles.update({t.format(n=layer): "bias" for t in table.biases})
    if embeddings:
        roles.update({name: "embedding" for name in table.embeddings if layout.get(name) is not None})
    kept = _kept(arch, table, values, chosen, embeddings)
    for name in kept:
        roles.setdefault(name, "new bias" if layout.get(name) is None else "bias")
    types, writers = {}, {}
    added = []
    for name, role in roles.items():
        if role == "new bias":
            types[name], writers[name] = quant.type_id("F32"), "gguf-py"
            added.append(Entry(name, (width,), types[name], 0, 4 * width))
            continue
        entry = layout.get(name)
        if entry is None:
            raise CorruptModelError(f"{source} is a {arch} file without {name}, which it should have.")
        if (entry.rows if role == "matrix" else entry.width) != width:
            raise CorruptModelError(
                f"{source}: {name} has shape {entry.shape}; a {width}-wide {role} was expected."
            )
        types[name], writers[name] = _written_type(entry, role, write_type)
    entries = [
        dataclasses.replace(
            e, ggml_type=types[e.name], n_bytes=e.rows * quant.row_bytes(types[e.name], e.width)
        )
        if e.name in types
        else e
        for e in layout.tensors
    ] + added
    embedding = layout.get("token_embd.weight")
    add_output = (
        "token_embd.weight" in roles and layout.get(table.unembedding) is None and embedding is not None
    )
    if add_output and embedding is not None:
        entries.append(dataclasses.replace(embedding, name=table.unembedding))
    return Plan(layout, u, roles, kept, tuple(entries), writers, add_output, chosen)


def _kept(
    arch: str,
    table: WriteBack,
    values: Mapping[Site, float] | None,
    layers: tuple[int, ...],
    embeddings: bool,
) -> dict[str, float]:
    """The tensor each mean-ablation value goes to (biases of the output matrices, embeddings)."""
    if values is None:
        return {}
    if not table.output_biases:
        raise UnsupportedArchitectureError(
            f"Mean ablation needs a bias on the attention output and the MLP down projection, and "
            f"mechlab has not checked that the runtime's {arch!r} graph adds one. Ablate without values "
            f"(projection only), or bake a llama or gpt2 file."
        )
    names: dict[Site, str] = {}
    for layer in layers:
        for kind, template in zip(table.kinds, table.matrices, strict=True):
            names[Site(kind, layer)] = template.format(n=layer).replace(".weight", ".bias")
    if embeddings:
        names.update({Site(k): n for k, n in zip(table.embedding_kinds, table.embeddings, strict=False)})
    unknown = [str(site) for site in values if site not in names]
    if unknown:
        raise InputError(
            f"Values were given for {', '.join(unknown)}, which this bake does not edit "
            f"({', '.join(map(str, names))}). Compute them for the same layers (mean_values)."
        )
    return {names[site]: float(value) for site, value in values.items()}


def _written_type(entry: Entry, role: str, write_type: str | None) -> tuple[int, str]:
    """The type an edited tensor is written in, and who writes it (see ``mechlab.fix.quantize``)."""
    if role == "bias" or len(entry.shape) == 1:
        kept = quant.type_name(entry.ggml_type) in ("F32", "F16")
        return (entry.ggml_type if kept else quant.type_id("F32")), "gguf-py"
    wanted = quant.type_id(write_type) if write_type else entry.ggml_type
    writer = quant.writer_for(wanted)
    if writer is not None and entry.width % quant.block_size(wanted) == 0:
        return wanted, writer
    fallback = quant.type_id(quant.FALLBACK)
    if entry.width % quant.block_size(fallback):
        fallback = quant.type_id("F16")
    return fallback, "gguf-py"


def bake(
    source: Path,
    direction: Float[Tensor, " d_model"],
    out: Path,
    *,
    layers: Sequence[int] | None = None,
    embeddings: bool = True,
    write_type: str | None = None,
    values: Mapping[Site, float] | None = None,
) -> BakeResult:
    """Write ``out``: ``source`` with ``direction`` projected out of the residual-stream writers of
    ``layers`` (default: every block) and, with ``embeddings``, of the embeddings.

    ``bake(src, u, out)`` matches ``mechlab.ablation_hooks(model, u)`` (every layer and the
    embeddings); ``layers=range(L, n), embeddings=False`` matches ablating only what blocks ``L…``
    write. ``write_type`` writes the edited tensors in another ggml type (e.g. ``"Q8_0"``).
    ``values`` (``mean_values``) makes it mean ablation, matching ``ablation_hooks(..., values=)``.

    Raises:
        CorruptModelError, UnsupportedArchitectureError, InputError: see ``plan``; ``out`` cannot be
            written, names ``source`` itself, or its disk lacks the room. Nothing is written then.
    """
    started = time.perf_counter()
    source = Path(source)
    steps = plan(
        source, direction, layers=layers, embeddings=embeddings, write_type=write_type, values=values
    )
    out = check_target(Path(out), "baked GGUF")
    if out.exists() and out.resolve() == source.resolve():
        raise InputError(MSG_BAKE_SAME_FILE.format(path=out))
    layout = steps.layout
    needed = layout.kv[1] + sum(e.n_bytes + layout.alignment + 64 for e in steps.entries)
    check_disk(out.parent, needed, f"the baked file {out.name}")
    residual, error, change = 0.0, 0.0, 0.0
    edits: list[TensorEdit] = []
    with atomic_dir_sibling(out) as partial, source.open("rb") as src, partial.open("wb") as dst:
        data_start = write_header(src, dst, layout, steps.entries)
        for entry in steps.entries:
            pad(dst, layout.alignment, base=data_start)
            original = layout.get(entry.name)
            if steps.roles.get(entry.name) == "new bias":
                dst.write(quant.quantize((steps.values[entry.name] * steps.u)[None], entry.ggml_type))
                edits.append(TensorEdit(entry.name, "-", "F32", "bias"))
            elif original is None:  # output.weight: the original token_embd, byte for byte
                copy(src, dst, entry.start, entry.n_bytes)
                kind = quant.type_name(entry.ggml_type)
                edits.append(TensorEdit(entry.name, kind, kind, "copy"))
            elif entry.name not in steps.roles:
                copy(src, dst, original.start, original.n_bytes)
            else:
                left, rounding, edit = _edit(
                    src,
                    dst,
                    original,
                    steps.roles[entry.name],
                    entry.ggml_type,
                    steps.u,
                    steps.values.get(entry.name, 0.0),
                )
                residual, error, change = max(residual, left), error + rounding, change + edit
                source_type, written = quant.type_name(original.ggml_type), quant.type_name(entry.ggml_type)
                edits.append(
                    TensorEdit(
                        entry.name, source_type, written, steps.writers[entry.name], write_type is not None
                    )
                )
        dst.flush()
        os.fsync(dst.fileno())
    return BakeResult(
        source=source,
        path=out,
        architecture=str(layout.metadata.get("general.architecture")),
        layers=steps.layers,
        embeddings=embeddings,
        edits=tuple(edits),
        residual=residual,
        noise=float(np.sqrt(error / change)) if change else 0.0,
        seconds=time.perf_counter() - started,
        n_bytes=out.stat().st_size,
    )


def _read_rows(src: BinaryIO, entry: Entry, first: int, count: int) -> np.ndarray:
    width = quant.row_bytes(entry.ggml_type, entry.width)
    src.seek(entry.start + first * width)
    raw = np.frombuffer(src.read(count * width), dtype=np.uint8)
    return quant.dequantize(raw, entry.ggml_type, entry.width).astype(np.float64)


def _edit(
    src: BinaryIO, dst: BinaryIO, entry: Entry, role: str, new_type: int, u: np.ndarray, value: float
) -> tuple[float, float, float]:
    """Write ``entry`` with ``u`` projected out (biases and embedding rows keep ``value`` along it).
    Returns, for a matrix, ``|uᵀW'| / |uᵀW|`` after rounding, the squared rounding error
    ``|W' - (I - uuᵀ)W|²`` and the squared edit ``|uuᵀW|²``."""
    if role == "bias":
        b = _read_rows(src, entry, 0, 1)[0]
        dst.write(quant.quantize((b - (b @ u - value) * u)[None], new_type))
        return 0.0, 0.0, 0.0
    if role == "embedding":  # rows are independent: one block of rows at a time
        for first in range(0, entry.rows, _ROWS):
            rows = _read_rows(src, entry, first, min(_ROWS, entry.rows - first))
            edited = rows - np.outer(rows @ u - value, u)
            dst.write(quant.round_rows_orthogonal(edited, u, new_type, value=value))
        return 0.0, 0.0, 0.0
    # A matrix [d_model rows, input width]: uᵀW needs every row before any row can be written.
    weights = _read_rows(src, entry, 0, entry.rows)
    before = weights.T @ u
    edited = weights - np.outer(u, before)
    rounded, data = quant.round_orthogonal(edited, u, new_type)
    dst.write(data)
    norm = float(np.linalg.norm(before))
    left = float(np.linalg.norm(rounded.T @ u)) / norm if norm else 0.0
    return left, float(((rounded - edited) ** 2).sum()), norm**2
