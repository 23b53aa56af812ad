"""Transcoders: a sparse dictionary that reads an MLP's input and predicts its output.

A per-layer transcoder replaces MLP ``layer`` by a sparse, wide, interpretable layer::

    z        = activation(mlp_in @ W_enc + b_enc)          [... d_sae]
    mlp_out ≈ z @ W_dec + b_dec  (+ mlp_in @ W_skip)        [... d_model]

It is an ``SAE`` whose ``site`` is ``mlp_in.L`` (the MLP's input: after ``ln2`` and its weight) and
whose ``site_out`` is ``mlp_out.L``; the optional skip connection ``W_skip [d_in, d_out]`` adds a
linear path (circuit-tracer's and Gemma Scope 2's skip transcoders). Training uses the SAE trainer
with ``site_out`` (``train_transcoders``); the attribution graph (``mechlab.graphs``) splices one in
per layer.

Files: mechlab writes SAELens's layout (``cfg.json`` + ``sae_weights.safetensors``) plus
``skip_weights.safetensors`` (``W_skip``) when there is a skip connection. ``load_transcoder`` also
reads circuit-tracer's single-file layout (``W_enc [d_sae, d_model]``, ``W_dec [d_sae, d_model]``,
``b_enc``, ``b_dec``, optional ``W_skip [d_model, d_model]`` applied as ``x @ W_skip.T``; ReLU, or
JumpReLU with ``threshold``) and Gemma Scope 2's ``params.safetensors`` (``w_enc [d_model, d_sae]``,
``w_dec``, ``b_enc``, ``b_dec``, ``threshold``, optional ``w_skip [d_model, d_model]`` applied as
``x @ w_skip``).
"""

import re
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save
from torch import Tensor, nn

from mechlab.dictionaries.sae import SAE, SAEConfig
from mechlab.errors import InputError
from mechlab.files import atomic_write

SKIP_FILE = "skip_weights.safetensors"
_LAYER_NAME = re.compile(r"(?:layer_?|l)?(\d+)(?:\.safetensors)?$")


class Transcoder(SAE):
    """An ``SAE`` reading ``cfg.site`` and predicting ``cfg.site_out``, with an optional skip
    connection ``W_skip [d_in, d_out]`` (``skip=True``; zero-initialised)."""

    W_skip: nn.Parameter | None

    def __init__(
        self, cfg: SAEConfig, *, skip: bool = False, device: torch.device | str | None = None, seed: int = 0
    ) -> None:
        if cfg.site_out is None:
            raise InputError(
                f"A transcoder predicts another site; its config has site_out=None (site {cfg.site}). "
                "Use transcoder_config(...) or set site_out (e.g. 'mlp_out.3')."
            )
        super().__init__(cfg, device=device, seed=seed)
        self.W_skip = (
            nn.Parameter(torch.zeros(cfg.d_in, cfg.width_out, dtype=cfg.torch_dtype, device=device))
            if skip
            else None
        )

    @property
    def layer(self) -> int:
        """The layer whose MLP it replaces."""
        layer = self.cfg.site_in.layer
        assert layer is not None  # transcoder_config / the loaders give a layer site
        return layer

    def skip(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The skip connection's output (zeros without one)."""
        if self.W_skip is None:
            return torch.zeros(*x.shape[:-1], self.cfg.width_out, dtype=self.W_dec.dtype, device=x.device)
        return x.to(self.W_skip.dtype) @ self.W_skip

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The predicted MLP output: sparse part plus skip connection."""
        return super().forward(x) + self.skip(x)

    def save(self, directory: str | Path) -> Path:
        """Write the SAE files, and ``skip_weights.safetensors`` when there is a skip connection."""
        from mechlab.dictionaries.formats import write_sae_dir

        state = {name: value for name, value in self.state_dict().items() if name != "W_skip"}
        path = write_sae_dir(self.cfg, state, Path(directory))
        if self.W_skip is not None:
            atomic_write(path / SKIP_FILE, save({"W_skip": self.W_skip.detach().cpu().contiguous()}))
        return path


def transcoder_config(
    d_model: int, layer: int, d_sae: int, *, architecture: str = "topk", k: int | None = 32, **fields: object
) -> SAEConfig:
    """The config of a transcoder replacing MLP ``layer`` (``mlp_in.L`` → ``mlp_out.L``)."""
    return SAEConfig(
        d_in=d_model,
        d_sae=d_sae,
        architecture=architecture,
        site=f"mlp_in.{layer}",
        site_out=f"mlp_out.{layer}",
        d_out=d_model,
        k=k if architecture == "topk" else None,
        **fields,  # type: ignore[arg-type]
    )


def from_sae(sae: SAE, *, w_skip: Tensor | None = None) -> Transcoder:
    """A ``Transcoder`` with ``sae``'s weights (and ``w_skip [d_in, d_out]`` when given)."""
    cfg = sae.cfg
    if cfg.site_out is None:
        layer = cfg.site_in.layer
        cfg = cfg.replace(site_out=f"mlp_out.{layer}", d_out=cfg.width_out)
    out = Transcoder(cfg, skip=w_skip is not None, device=sae.device)
    state = {k: v for k, v in sae.state_dict().items()}
    if w_skip is not None:
        if tuple(w_skip.shape) != (cfg.d_in, cfg.width_out):
            raise InputError(
                f"W_skip has shape {tuple(w_skip.shape)}; expected [d_in, d_out] = "
                f"[{cfg.d_in}, {cfg.width_out}]."
            )
        state["W_skip"] = w_skip
    out.load_state_dict({k: v.to(out.device, cfg.torch_dtype) for k, v in state.items()})
    return out


def _circuit_tracer(path: Path, layer: int) -> Transcoder:
    try:
        raw = dict(load_file(str(path)))
    except Exception as error:  # safetensors raises its own error types
        raise InputError(f"Cannot read transcoder weights from {path}: {error}") from error
    missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(raw)
    if missing:
        raise InputError(f"{path} is not a circuit-tracer transcoder: it lacks {', '.join(sorted(missing))}.")
    w_enc, w_dec = raw["W_enc"], raw["W_dec"]
    d_model = raw["b_dec"].shape[0]
    if w_enc.shape[1] == d_model and w_enc.shape[0] != d_model:
        w_enc = w_enc.T  # circuit-tracer's ReLU files store W_enc as [d_sae, d_model]
    if w_dec.shape[0] == d_model and w_dec.shape[1] != d_model:
        w_dec = w_dec.T
    threshold = raw.get("threshold", raw.get("activation_function.threshold"))
    d_sae = int(w_enc.shape[1])
    cfg = transcoder_config(
        int(d_model), layer, d_sae, architecture="relu" if threshold is None else "jumprelu", k=None
    )
    state = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": raw["b_enc"], "b_dec": raw["b_dec"]}
    if threshold is not None:
        state["threshold"] = threshold
    skip = raw.get("W_skip")
    tc = Transcoder(cfg, skip=skip is not None)
    if skip is not None:
        state["W_skip"] = skip.T  # circuit-tracer computes x @ W_skip.T
    tc.load_state_dict({k: v.float().contiguous() for k, v in state.items()})
    return tc


def load_transcoder(
    path: str | Path, *, layer: int | None = None, device: torch.device | str | None = None
) -> Transcoder:
    """Read one transcoder: a mechlab/SAELens directory, a Gemma Scope 2 directory
    (``params.safetensors``), or a circuit-tracer ``.safetensors`` file.

    ``layer``: the MLP it replaces, when the files do not say (Gemma Scope 2, circuit-tracer).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        if layer is None:
            layer = _layer_of(path)
        return _circuit_tracer(path, layer).to(device or "cpu")
    if not path.is_dir():
        raise InputError(f"No transcoder at {path}: expected a directory or a .safetensors file.")
    gemma = path / "params.safetensors"
    w_skip = None
    if gemma.is_file() and not (path / "cfg.json").is_file():
        raw = dict(load_file(str(gemma)))
        w_skip = raw.get("w_skip", raw.get("W_skip", raw.get("affine_skip_connection")))
        if w_skip is not None:
            # SAE.load rejects unknown tensors; read the rest from a copy without the skip weights.
            raw = {k: v for k, v in raw.items() if k not in ("w_skip", "W_skip", "affine_skip_connection")}
        if layer is None:
            layer = _layer_of(path)
        sae = _sae_from_tensors(raw, path, layer)
    else:
        site = None if layer is None else f"mlp_in.{layer}"
        sae = SAE.load(path, site=site)
        if (path / SKIP_FILE).is_file():
            w_skip = load_file(str(path / SKIP_FILE))["W_skip"]
    return from_sae(sae, w_skip=w_skip).to(device or "cpu")


def _sae_from_tensors(raw: dict[str, Tensor], where: Path, layer: int) -> SAE:
    tensors = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in raw.items()}
    if "W_enc" not in tensors or "W_dec" not in tensors:
        raise InputError(f"{where} lacks w_enc/w_dec; found {', '.join(sorted(raw))}.")
    d_model, d_sae = tensors["W_enc"].shape
    cfg = transcoder_config(int(d_model), layer, int(d_sae), architecture="jumprelu", k=None)
    sae = SAE(cfg)
    sae.load_state_dict({k: v.float().contiguous() for k, v in tensors.items()})
    return sae


def _layer_of(path: Path) -> int:
    match = _LAYER_NAME.search(path.name)
    if match is None:
        raise InputError(
            f"Cannot tell which layer {path} replaces: name it layer_N (or N.safetensors), or pass layer=."
        )
    return int(match.group(1))


def load_transcoders(
    directory: str | Path, *, device: torch.device | str | None = None
) -> dict[int, Transcoder]:
    """Every transcoder under ``directory`` (one entry per sub-directory or ``.safetensors`` file),
    keyed by the layer it replaces.

    Raises:
        InputError: the directory holds none, or two for one layer.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"Transcoder directory {directory} does not exist or is not a directory.")
    found: dict[int, Transcoder] = {}
    for entry in sorted(directory.iterdir()):
        if not (entry.is_dir() or entry.suffix == ".safetensors"):
            continue
        tc = load_transcoder(entry, layer=None if entry.is_dir() else _layer_of(entry), device=device)
        if tc.layer in found:
            raise InputError(f"{directory} holds two transcoders for layer {tc.layer} (one is {entry}).")
        found[tc.layer] = tc
    if not found:
        raise InputError(
            f"{directory} holds no transcoders: expected one directory (layer_N/) or file per layer. "
            "Train them with `mechlab sae train --transcoder` or bench/graph.py --train."
        )
    return dict(sorted(found.items()))


def encoder_view(tc: Transcoder) -> SAE:
    """An ``SAE`` with ``tc``'s weights reading ``tc.cfg.site`` (no ``site_out``, no skip): what feature
    pages and SAE site kinds take to read its latents' activations (its decoder writes elsewhere)."""
    if tc.cfg.width_out != tc.cfg.d_in:
        raise InputError(
            f"Only a transcoder with d_out == d_in has an SAE view; this one maps "
            f"{tc.cfg.d_in} → {tc.cfg.width_out}."
        )
    sae = SAE(tc.cfg.replace(site_out=None, d_out=None), device=tc.device)
    sae.load_state_dict({k: v for k, v in tc.state_dict().items() if k != "W_skip"})
    return sae
