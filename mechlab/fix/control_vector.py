"""llama.cpp control vectors: a steering direction as the file ``llama-cli --control-vector`` loads.

A control vector is a GGUF file whose ``general.architecture`` is ``controlvector`` and whose tensors
are 1-D F32 vectors named ``direction.N``, ``N >= 1``, each as wide as the residual stream. llama.cpp
reads no metadata from it (``common_control_vector_load_one`` in ``common/common.cpp``): it adds
``strength · direction.N`` to the residual stream after block ``N``, at every position.

The block index, read off llama.cpp and checked against it (``tests/integration/test_fix_llamacpp.py``):
``common_control_vector_load_one`` stores ``direction.N`` at offset ``n_embd · (N - 1)`` of a flat
buffer, and ``llama_adapter_cvec::apply`` (``src/llama-adapter.cpp``) fills block ``il``'s tensor from
offset ``n_embd · (il - 1)``; the two ``- 1`` cancel, so ``direction.N`` belongs to block ``il = N``
(0-based), and the graph adds it to that block's output right before naming it ``l_out-N``
(``build_cvec`` after the MLP's residual add). In mechlab's numbering that is
``Site("resid_post", N)``, which is also ``Site("resid_pre", N + 1)``. Block 0's output has no slot
(llama.cpp rejects ``direction.0``), so ``resid_post`` 0 and ``resid_pre`` 0 and 1 cannot be exported.
"""

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.errors import MSG_CONTROL_VECTOR_SITE, MSG_DIRECTION_WIDTH, CorruptModelError, InputError
from mechlab.files import atomic_dir_sibling, check_target
from mechlab.sites import Site

ARCHITECTURE = "controlvector"
PREFIX = "direction."


def block_of(site: Site, n_layers: int) -> int:
    """The llama.cpp block ``N`` (tensor ``direction.N``) whose output is mechlab's ``site``.

    Raises:
        InputError: ``site`` is not a whole residual-stream site, is out of range, or is block 0's
            output or earlier (llama.cpp has no slot for it).
    """
    whole = site.head is None and site.pos is None and site.layer is not None
    if not whole or site.kind not in ("resid_post", "resid_pre") or site.layer is None:
        raise InputError(MSG_CONTROL_VECTOR_SITE.format(site=site, last=n_layers - 1))
    block = site.layer if site.kind == "resid_post" else site.layer - 1
    if not 1 <= block <= n_layers - 1 or site.layer >= n_layers:
        raise InputError(MSG_CONTROL_VECTOR_SITE.format(site=site, last=n_layers - 1))
    return block


@dataclasses.dataclass(frozen=True, eq=False)
class ControlVector:
    """The vectors llama.cpp adds, by block.

    Attributes:
        vectors: block ``N`` (``>= 1``) → the vector added to that block's output (already scaled).
        n_layers: the model's block count.
        model_hint: the model's architecture (``controlvector.model_hint``, as repeng writes it).
    """

    vectors: Mapping[int, np.ndarray]
    n_layers: int
    model_hint: str = ""

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("A control vector needs at least one block's vector.")
        widths = {v.shape for v in self.vectors.values()}
        if len(widths) != 1 or len(next(iter(widths))) != 1:
            raise ValueError(f"Every vector must be 1-D and equally wide; got shapes {sorted(widths)}.")
        bad = [n for n in self.vectors if not 1 <= n <= self.n_layers - 1]
        if bad:
            raise ValueError(
                f"Blocks {bad} have no control-vector slot; llama.cpp takes blocks 1..{self.n_layers - 1}."
            )

    @property
    def width(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def flat(self, strength: float = 1.0) -> np.ndarray:
        """The buffer ``llama_set_adapter_cvec`` takes: block 1's vector first, ``n_embd`` per block
        up to the last block, zeros where a block has none, as ``common_control_vector_load`` builds it."""
        out = np.zeros((self.n_layers - 1, self.width), dtype=np.float32)
        for block, vector in self.vectors.items():
            out[block - 1] += strength * vector
        return out.reshape(-1)

    def summary(self) -> str:
        blocks = ", ".join(
            f"direction.{n} (|v| = {np.linalg.norm(v):.3g})" for n, v in sorted(self.vectors.items())
        )
        return f"Control vector for a {self.n_layers}-block {self.model_hint or 'model'}: {blocks}"


def control_vector(
    direction: Float[Tensor, " d_model"],
    site: Site,
    *,
    n_layers: int,
    d_model: int,
    scale: float = 1.0,
    unit: float = 1.0,
    model_hint: str = "",
) -> ControlVector:
    """The control vector that adds ``scale · unit · u`` at ``site`` (``u = direction / |direction|``),
    as ``mechlab.steer(model, tokens, site, direction, target, scales=[scale], unit=unit)`` does.

    Raises:
        InputError: the direction is not a non-zero vector of width ``d_model``, or ``site`` has no
            llama.cpp slot (``block_of``).
    """
    if direction.ndim != 1 or direction.shape[0] != d_model:
        raise InputError(MSG_DIRECTION_WIDTH.format(shape=tuple(direction.shape), d_model=d_model))
    norm = float(direction.float().norm())
    if not np.isfinite(norm) or norm == 0:
        raise InputError(f"The direction must be a finite, non-zero vector; its norm is {norm}.")
    block = block_of(site, n_layers)
    vector = (direction.double() / norm * scale * unit).float().cpu().numpy()
    return ControlVector({block: vector}, n_layers=n_layers, model_hint=model_hint)


def write_control_vector(vector: ControlVector, path: Path) -> Path:
    """Write ``vector`` as a llama.cpp control-vector GGUF at ``path`` (through a temporary sibling
    and a rename: an existing file is replaced only by a complete one).

    Raises:
        InputError: ``path`` cannot be written (``mechlab.files.check_target``).
    """
    import gguf

    path = check_target(Path(path), "control vector")
    with atomic_dir_sibling(path) as partial:
        writer = gguf.GGUFWriter(str(partial), ARCHITECTURE)
        try:
            writer.add_string(f"{ARCHITECTURE}.model_hint", vector.model_hint)
            writer.add_int32(f"{ARCHITECTURE}.layer_count", vector.n_layers - 1)
            for block, values in sorted(vector.vectors.items()):
                writer.add_tensor(f"{PREFIX}{block}", np.ascontiguousarray(values, dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def read_control_vector(path: Path, *, n_layers: int | None = None) -> ControlVector:
    """Read a control-vector GGUF, with llama.cpp's checks: every tensor named ``direction.N`` with
    ``N >= 1``, F32, 1-D, all of one width (and, given ``n_layers``, ``N < n_layers``).

    Raises:
        CorruptModelError: the file is not a GGUF file or breaks one of the rules above.
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as error:
        raise CorruptModelError(f"{path} is not a readable GGUF file: {error}") from error
    field = reader.fields.get("general.architecture")
    hint_field = reader.fields.get(f"{ARCHITECTURE}.model_hint")
    count_field = reader.fields.get(f"{ARCHITECTURE}.layer_count")
    vectors: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        number = tensor.name.removeprefix(PREFIX)
        if not tensor.name.startswith(PREFIX) or not number.isdigit() or int(number) == 0:
            raise CorruptModelError(
                f"{path}: tensor {tensor.name!r} is not a control-vector direction (direction.N, N >= 1)."
            )
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise CorruptModelError(f"{path}: {tensor.name} must be a 1-D F32 tensor, as llama.cpp requires.")
        vectors[int(number)] = np.array(tensor.data, dtype=np.float32)
    if not vectors:
        raise CorruptModelError(f"{path} holds no direction.N tensors; llama.cpp would skip it.")
    layers = n_layers
    if layers is None:
        layers = int(count_field.contents()) + 1 if count_field is not None else max(vectors) + 1
    try:
        return ControlVector(
            vectors,
            n_layers=layers,
            model_hint=str(hint_field.contents()) if hint_field is not None else "",
        )
    except ValueError as error:
        architecture = field.contents() if field is not None else None
        raise CorruptModelError(f"{path} ({architecture}): {error}") from error


def as_tensor(vector: ControlVector, block: int) -> Float[Tensor, " d_model"]:
    """The vector added after ``block``, as a float32 tensor (zeros where the file has none)."""
    values = vector.vectors.get(block)
    return torch.zeros(vector.width) if values is None else torch.from_numpy(values.copy())
