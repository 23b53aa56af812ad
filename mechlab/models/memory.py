"""A memory plan before loading: what loading a GGUF file, and running methods on it, will take.

``plan_memory(source)`` reads the GGUF header alone (tensor shapes, never their data) and estimates,
for each loading mode, the peak memory of: loading (the first load converts the file, holding the
dequantized tensors and the model together; later loads read the converted copy), a forward pass,
an Integrated Gradients run (``ig_batch`` interpolation points per pass, activations kept for the
backward pass) and an all-heads attribution-patching sweep, at a prompt length — and compares each
with the memory available (RAM; a GPU's free memory for the model itself when ``device`` is one).
``load_model`` checks the plan of the mode it is asked for before converting or loading anything and
refuses one that does not fit, naming the modes that would.

The estimates are a model with constants measured on SmolLM2 (135M parameters, float32: peak RSS
1,029 MB after a 32-token forward, 2,148 MB during IG, 1,083 MB during AtP, 1,247 MB converting)
and Gemma 3 270M (1,965, 3,489, 2,033 and 3,331 MB); ``bench/memory_plan.py`` prints estimate and
measurement side by side.

Modes (``load_model(weights=...)``): ``float32`` and the half-precision ``bfloat16`` / ``float16``
(their converted copies are written once from the float32 one, ``mechlab.models.precision``), and
``quantized``: the file's blocks stay mapped (about the file's size) and each matrix is dequantized in
chunks of ``quantized.CHUNK_ELEMENTS`` weights as it is used, activations in float32.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from mechlab.errors import MSG_MEMORY_PLAN, InputError, MechlabError, MemoryPlanError
from mechlab.models import gguf_scan

# Each mode and the dtype of its activations.
MODES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "quantized": torch.float32,
}
# Quantized mode: the dequantized chunk and the temporaries of its dequantization (float32).
CHUNK_TEMPORARIES = 3 * 4 * (1 << 24)
MB = 1024**2
# Python, torch, transformers and TransformerLens imported (fitted; 352 MB measured with nothing loaded
# includes allocations the tokenizer term counts).
BASELINE = 290 * MB
# The tokenizer, per vocabulary entry (Gemma 3's 262,144 entries hold ~300 MB).
TOKENIZER_PER_TOKEN = 1200
# Converting holds the dequantized float32 tensors and the model together (1.6 × the float32
# weights), and transformers builds the tokenizer from the GGUF vocabulary (~4 KB per entry).
CONVERT_FACTOR = 1.6
CONVERT_PER_TOKEN = 4096
# Writing a half-precision copy reads the float32 copy tensor by tensor (its pages stay resident).
WRITE_FACTOR = 1.2
# Allocator and bookkeeping over the weights during a forward pass.
RUN_OVERHEAD = 0.2
DEFAULT_PROMPT_LEN = 32
DEFAULT_IG_BATCH = 16  # mechlab.integrated_gradients' default batch_size


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the estimate needs from a GGUF header."""

    n_params: int
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    file_bytes: int


@dataclasses.dataclass(frozen=True)
class ModePlan:
    """Peak bytes of each step in one loading mode, and the bytes ``available`` to compare them with."""

    mode: str
    weights: int
    load: int
    forward: int
    ig: int
    atp: int
    available: int

    @property
    def peak(self) -> int:
        return max(self.load, self.forward, self.ig, self.atp)

    @property
    def fits(self) -> bool:
        return self.peak <= self.available

    @property
    def loads(self) -> bool:
        """Loading and a forward pass fit (IG or AtP may still not)."""
        return max(self.load, self.forward) <= self.available


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The plan for each mode of one GGUF file at ``prompt_len`` tokens on ``device``."""

    path: str
    device: str
    prompt_len: int
    shape: Shape
    available: int
    modes: tuple[ModePlan, ...]

    def __getitem__(self, mode: str) -> ModePlan:
        for plan in self.modes:
            if plan.mode == mode:
                return plan
        raise KeyError(f"{mode!r}: the plan has {', '.join(p.mode for p in self.modes)}")

    def fitting(self) -> list[str]:
        """The modes whose every step fits."""
        return [plan.mode for plan in self.modes if plan.fits]

    def rows(self) -> list[list[str]]:
        """One row per mode: weights, load, forward, IG, AtP (GB), and whether it fits."""
        return [
            [
                p.mode,
                *(f"{v / 1024**3:.2f}" for v in (p.weights, p.load, p.forward, p.ig, p.atp)),
                _verdict(p),
            ]
            for p in self.modes
        ]

    def summary(self) -> str:
        fitting = self.fitting()
        return (
            f"{Path(self.path).name}: {self.shape.n_params / 1e9:.2f}B parameters, "
            f"{self.shape.n_layers} layers; "
            f"{self.available / 1024**3:.1f} GB available on {self.device}; at {self.prompt_len} tokens "
            + (f"every step fits in {', '.join(fitting)}." if fitting else "no mode fits every step.")
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fitting"] = self.fitting()
        return data


def _verdict(plan: ModePlan) -> str:
    if plan.fits:
        return "fits"
    return "loads; IG/AtP do not fit" if plan.loads else "does not fit"


def _scalar(value: Any) -> int:
    values = value if isinstance(value, list | tuple) else [value]
    return max(int(v) for v in values)


def read_shape(path: Path) -> Shape:
    """The sizes the plan needs, from the header's metadata and tensor table (milliseconds: no
    tensor data is read and the vocabulary is skipped, not decoded).

    Raises:
        CorruptModelError: not a GGUF file, or a header the file cannot hold.
    """
    from mechlab.errors import MSG_CORRUPT_GGUF, CorruptModelError
    from mechlab.models.gguf import _check_magic as check_magic

    size = check_magic(path)
    try:
        header = gguf_scan.read(path)
        arch = str(header.metadata["general.architecture"])
        meta = {k.removeprefix(f"{arch}."): v for k, v in header.metadata.items() if k.startswith(f"{arch}.")}
        d_model = _scalar(meta["embedding_length"])
        embedding = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
        vocab = (
            max(embedding.shape) if embedding is not None else int(header.metadata["tokenizer.ggml.tokens"])
        )
        return Shape(
            n_params=sum(t.n_elements for t in header.tensors),
            n_layers=_scalar(meta["block_count"]),
            d_model=d_model,
            d_mlp=_scalar(meta.get("feed_forward_length", 4 * d_model)),
            n_heads=_scalar(meta["attention.head_count"]),
            d_vocab=vocab,
            file_bytes=size,
        )
    except (gguf_scan.HeaderError, KeyError, TypeError, ValueError) as error:
        raise CorruptModelError(MSG_CORRUPT_GGUF.format(path=path, error=error, size=size)) from error


def available_bytes(device: str | torch.device = "cpu") -> int:
    """Memory this process may still use: RAM (``MemAvailable`` plus what it holds now) or, for a
    GPU, its free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"{device}: this machine has no CUDA device (or torch was built without CUDA). Use cpu."
            )
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/self/statm") as statm:
            held = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # resident pages now
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024 + held
    except (OSError, KeyError, ValueError, IndexError):
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _activations_per_token_layer(shape: Shape, prompt_len: int, itemsize: int) -> int:
    """Bytes a forward pass keeps per token and layer for the backward pass (the residual-stream
    and MLP tensors autograd saves, and the attention scores)."""
    return itemsize * (16 * shape.d_model + 4 * shape.d_mlp + 3 * shape.n_heads * prompt_len)


def plan_mode(
    shape: Shape,
    mode: str,
    *,
    prompt_len: int,
    ig_batch: int,
    available: int,
    gpu: bool,
    copies: frozenset[str] = frozenset(),
) -> ModePlan:
    """One mode's estimate (see the module docstring for the model and its constants); ``copies``
    are the modes whose converted copy is already in the cache."""
    itemsize = MODES[mode].itemsize
    quantized = mode == "quantized"
    weights = shape.file_bytes if quantized else shape.n_params * itemsize
    if gpu:  # the device holds the weights and the activations; conversion happens in RAM
        load, host = weights, 0
    else:
        host = BASELINE + TOKENIZER_PER_TOKEN * shape.d_vocab
        if quantized:  # the blocks are mapped, not read; the first load builds the tokenizer
            load = host + (0 if mode in copies else CONVERT_PER_TOKEN * shape.d_vocab)
        elif mode in copies:  # read the copy in this mode
            load = host + weights
        elif "float32" in copies:  # write the half-precision copy from the float32 one, streaming
            load = host + int(WRITE_FACTOR * 4 * shape.n_params)
        else:  # convert the GGUF file first
            load = host + int(CONVERT_FACTOR * 4 * shape.n_params) + CONVERT_PER_TOKEN * shape.d_vocab
    forward = host + int((1 + RUN_OVERHEAD) * weights) + 2 * prompt_len * shape.d_vocab * 4
    if quantized:
        forward += CHUNK_TEMPORARIES
    per_prompt = _activations_per_token_layer(shape, prompt_len, itemsize) * shape.n_layers * prompt_len
    ig = forward + ig_batch * per_prompt + ig_batch * prompt_len * shape.d_vocab * 4 * 2
    atp = forward + 2 * per_prompt
    return ModePlan(mode, weights, load, forward, ig, atp, available)


def check_fits(path: Path, mode: str, device: torch.device) -> None:
    """Refuse to load ``path`` in ``mode`` on ``device`` when its load or forward pass does not fit.

    Raises:
        MemoryPlanError: naming the step that does not fit and the modes whose load and forward fit.
    """
    if mode not in MODES:
        return
    try:
        plans = plan_file(path, device=device)
    except MechlabError:
        return  # no plan without the sizes; the loader says what is wrong with the file
    plan = plans[mode]
    if plan.loads:
        return
    step, needed = max((("loading", plan.load), ("a forward pass", plan.forward)), key=lambda item: item[1])
    fitting = [other.mode for other in plans.modes if other.loads]
    raise MemoryPlanError(
        MSG_MEMORY_PLAN.format(
            name=path.name,
            mode=mode,
            device=device,
            needed=needed / 1024**3,
            step=step,
            available=plans.available / 1024**3,
            fitting=f"Modes that fit: {', '.join(fitting)} (load_model(weights=...)). "
            if fitting
            else "No mode fits. ",
        )
    )


def converted_copies(path: Path) -> frozenset[str]:
    """The modes whose converted copy of this GGUF file is in the cache (its hash is remembered)."""
    from mechlab.models import precision
    from mechlab.models.cache import converted_dir, file_sha256
    from mechlab.models.gguf import CONVERSION_VERSION, HEADER_FILE, load_header

    def current(directory: Path) -> bool:
        return (directory / HEADER_FILE).is_file() and load_header(directory).conversion == CONVERSION_VERSION

    converted = converted_dir(file_sha256(path))
    quantized = {"quantized"} if current(converted.with_name(f"{converted.name}-quantized")) else set()
    if not current(converted):
        return frozenset(quantized)
    half = {name for dtype, name in precision.NAMES.items() if precision.has_copy(converted, dtype)}
    return frozenset({"float32", *half, *quantized})


def plan_memory(
    source: str | Path,
    *,
    device: str | torch.device = "cpu",
    prompt_len: int = DEFAULT_PROMPT_LEN,
    ig_batch: int = DEFAULT_IG_BATCH,
    modes: tuple[str, ...] = tuple(MODES),
    available: int | None = None,
) -> MemoryPlan:
    """The memory plan of a GGUF source (a path, ``gguf:PATH``, ``ollama:NAME``, ``smollm2``…).

    Args:
        device: where the model would run; a GPU's free memory is compared with the model's needs.
        prompt_len: tokens per prompt of the forward, IG and AtP estimates.
        ig_batch: interpolation points per IG pass (``integrated_gradients(batch_size=...)``).
        available: bytes to plan for (default: what this machine has free now).

    Raises:
        InputError: the source is not a GGUF file, or an unknown mode.
    """
    from mechlab.models.sources.base import resolve_source

    scheme, target = resolve_source(str(source))
    if scheme != "gguf":
        raise InputError(f"The memory plan reads a GGUF header; {source!r} is a {scheme} source.")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError(f"Unknown loading mode(s) {', '.join(unknown)}; modes: {', '.join(MODES)}.")
    return plan_file(
        Path(target),
        device=device,
        prompt_len=prompt_len,
        ig_batch=ig_batch,
        modes=modes,
        available=available,
    )


def plan_file(
    path: Path,
    *,
    device: str | torch.device = "cpu",
    prompt_len: int = DEFAULT_PROMPT_LEN,
    ig_batch: int = DEFAULT_IG_BATCH,
    modes: tuple[str, ...] = tuple(MODES),
    available: int | None = None,
) -> MemoryPlan:
    """``plan_memory`` for a GGUF file already resolved to its path."""
    shape = read_shape(path)
    device = torch.device(device)
    room = available_bytes(device) if available is None else available
    copies, gpu = converted_copies(path), device.type == "cuda"
    plans = tuple(
        plan_mode(
            shape, mode, prompt_len=prompt_len, ig_batch=ig_batch, available=room, gpu=gpu, copies=copies
        )
        for mode in modes
    )
    return MemoryPlan(str(path), str(device), prompt_len, shape, room, plans)
