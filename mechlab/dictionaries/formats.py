"""Reading and writing SAE directories: mechlab's own, SAELens's, and Gemma Scope's.

**SAELens layout** (what ``SAE.save`` writes): ``cfg.json`` + ``sae_weights.safetensors`` holding
``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for
JumpReLU, ``threshold [d_sae]``. ``cfg.json`` (SAELens 6) has ``architecture`` (``standard`` is
ReLU, ``topk``, ``jumprelu``), ``d_in``, ``d_sae``, ``dtype``, ``apply_b_dec_to_input``,
``normalize_activations``, TopK's ``k`` and ``rescale_acts_by_decoder_norm``, and a ``metadata``
(older files: ``meta``) block with ``model_name`` and ``hook_name``. Files from SAELens < 6 keep
those at the top level, name the hook ``hook_point``, give TopK's k as ``activation_fn_kwargs.k``
and default ``apply_b_dec_to_input`` to true; all of that is read. mechlab adds a ``mechlab`` block
(site, transcoder output) that SAELens ignores.

**Gemma Scope**: ``params.npz`` (Gemma Scope: ``W_enc W_dec b_enc b_dec threshold``) or
``params.safetensors`` (Gemma Scope 2: ``w_enc w_dec b_enc b_dec threshold``), JumpReLU, no input
normalization, ``b_dec`` not subtracted from the input. Their folders do not always say which hook
they read, so ``load_sae(..., site="resid_post.12")`` names it when no ``config.json`` does.
"""

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from mechlab.dictionaries.config import SAEConfig
from mechlab.errors import InputError, SiteError
from mechlab.files import atomic_write
from mechlab.site_kinds import GLOBAL_KINDS, LAYER_KINDS
from mechlab.sites import Site

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
GEMMA_SCOPE_FILES = ("params.safetensors", "params.npz")
# The SAELens config format these files follow (6.x: metadata block, architecture names).
SAELENS_FORMAT_VERSION = "6.0.0"

# SAELens architecture name -> mechlab's, and back.
_FROM_SAELENS = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}
_TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
_LAYER_IN_HOOK = re.compile(r"(?:blocks|layers)\.(\d+)\.")


def site_of_hook(hook_name: str) -> str:
    """The mechlab site string of a HookedTransformer hook name (``blocks.6.hook_resid_post`` →
    ``resid_post.6``); also reads Hugging Face's ``model.layers.6.output`` as ``resid_post.6``."""
    for kind in GLOBAL_KINDS:
        if Site(kind).hook_name == hook_name:
            return kind
    match = _LAYER_IN_HOOK.search(hook_name)
    if match is not None:
        layer = int(match.group(1))
        if hook_name.startswith("model.layers.") and hook_name.endswith(".output"):
            return f"resid_post.{layer}"
        for kind in LAYER_KINDS:
            if Site(kind, layer).hook_name == hook_name:
                return f"{kind}.{layer}"
    raise InputError(
        f"Cannot tell which mechlab site the hook {hook_name!r} is. Pass site= (e.g. "
        "site='resid_post.6') to name the site this SAE reads."
    )


# ---- writing ----------------------------------------------------------------------------------


def config_dict(cfg: SAEConfig) -> dict[str, Any]:
    """``cfg.json``'s content for ``cfg``: SAELens 6's fields plus a ``mechlab`` block."""
    site = Site.parse(cfg.site)
    out: dict[str, Any] = {
        "architecture": _TO_SAELENS[cfg.architecture],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "none",
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    if cfg.d_out is not None:
        out["d_out"] = cfg.d_out
    metadata: dict[str, Any] = {
        "model_name": cfg.model_name,
        "hook_name": site.hook_name,
        "hook_layer": site.layer,
        "hook_head_index": None,
        "sae_lens_version": SAELENS_FORMAT_VERSION,
    }
    if cfg.site_out is not None:
        metadata["hook_name_out"] = Site.parse(cfg.site_out).hook_name
    out["metadata"] = metadata
    out["mechlab"] = {
        "architecture": cfg.architecture,
        "site": cfg.site,
        "site_out": cfg.site_out,
        "d_out": cfg.d_out,
        "norm_scaling_factor": cfg.norm_scaling_factor,
    }
    return out


def write_sae_dir(cfg: SAEConfig, state: Mapping[str, torch.Tensor], directory: Path) -> Path:
    """Write ``directory/cfg.json`` + ``directory/sae_weights.safetensors`` for an SAE's config and
    state dict.

    Each file is written atomically; the weights go first, so a directory with a ``cfg.json`` always
    has the weights that config describes (an old config is replaced last).
    """
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(f"Refusing to save an SAE whose {name} holds NaN or infinite values.")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"Cannot save an SAE into {directory}: it exists and is not a directory.")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / WEIGHTS_FILE, save(tensors))
    atomic_write(directory / CFG_FILE, json.dumps(config_dict(cfg), indent=2) + "\n")
    return directory


# ---- reading ----------------------------------------------------------------------------------


def _block(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    return value if isinstance(value, dict) else {}


def _normalization(value: Any) -> str:
    # SAELens < 6 wrote a bool: true meant the April-update expected-average scaling.
    if isinstance(value, bool):
        return "expected_average_only_in" if value else "none"
    return "none" if value is None else str(value)


def config_from_dict(raw: dict[str, Any], *, site: str | None = None, where: str = "cfg.json") -> SAEConfig:
    """An ``SAEConfig`` from a ``cfg.json`` written by mechlab or SAELens (any version)."""
    ours = _block(raw, "mechlab")
    meta = {**_block(raw, "meta"), **_block(raw, "metadata")}
    flat = {**raw, **meta}
    architecture = ours.get("architecture")
    if architecture is None:
        saelens_arch = str(flat.get("architecture", "standard"))
        activation = str(flat.get("activation_fn", flat.get("activation_fn_str", "relu")))
        if saelens_arch == "standard" and activation == "topk":
            saelens_arch = "topk"
        if saelens_arch not in _FROM_SAELENS:
            raise InputError(
                f"{where}: SAE architecture {saelens_arch!r} is not supported; mechlab reads "
                f"{', '.join(sorted(_FROM_SAELENS))}."
            )
        architecture = _FROM_SAELENS[saelens_arch]
    k = flat.get("k")
    if k is None and architecture == "topk":
        k = _block(flat, "activation_fn_kwargs").get("k")
    if site is None:
        site = ours.get("site")
    if site is None:
        hook_name = flat.get("hook_name", flat.get("hook_point"))
        if not isinstance(hook_name, str):
            raise InputError(f"{where} names no hook_name; pass site= to say which site the SAE reads.")
        site = site_of_hook(hook_name)
    site_out = ours.get("site_out")
    if site_out is None and isinstance(flat.get("hook_name_out"), str):
        site_out = site_of_hook(flat["hook_name_out"])
    try:
        return SAEConfig(
            d_in=int(flat["d_in"]),
            d_sae=int(flat["d_sae"]),
            architecture=architecture,
            site=site,
            k=None if architecture != "topk" or k is None else int(k),
            # SAELens's default when the field is missing (pre-6 files).
            apply_b_dec_to_input=bool(flat.get("apply_b_dec_to_input", True)),
            normalize_activations=_normalization(flat.get("normalize_activations")),
            d_out=ours.get("d_out", flat.get("d_out")),
            site_out=site_out,
            model_name=flat.get("model_name"),
            dtype=str(flat.get("dtype", "float32")).removeprefix("torch."),
            norm_scaling_factor=ours.get("norm_scaling_factor"),
            rescale_acts_by_decoder_norm=bool(flat.get("rescale_acts_by_decoder_norm", False)),
        )
    except KeyError as error:
        raise InputError(f"{where} lacks the field {error.args[0]!r} an SAE config needs.") from error
    except (ValueError, TypeError) as error:
        raise InputError(f"{where} does not describe a valid SAE: {error}") from error


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"Cannot read {path} as JSON: {error}") from error
    if not isinstance(raw, dict):
        raise InputError(f"{path} holds {type(raw).__name__}; expected a JSON object.")
    return raw


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path) as data:
                return {key: torch.from_numpy(np.array(data[key])) for key in data.files}
        return dict(load_file(str(path)))
    except Exception as error:  # safetensors and numpy raise their own error types
        raise InputError(f"Cannot read SAE weights from {path}: {error}") from error


def _gemma_scope_config(directory: Path, tensors: dict[str, torch.Tensor], site: str | None) -> SAEConfig:
    info = _read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
    if site is None:
        hook = info.get("hf_hook_point_in", info.get("hook_name"))
        if not isinstance(hook, str):
            raise InputError(
                f"{directory} holds Gemma Scope weights but does not say which hook they read. Pass "
                "site= (e.g. site='resid_post.12' for a layer-12 residual-stream SAE)."
            )
        site = site_of_hook(hook)
    d_in, d_sae = tensors["W_enc"].shape
    return SAEConfig(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture="jumprelu",
        site=site,
        d_out=int(tensors["W_dec"].shape[1]) if tensors["W_dec"].shape[1] != d_in else None,
        model_name=info.get("model_name"),
    )


def read_sae_dir(directory: Path, *, site: str | None = None) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """The config and tensors (SAELens names) of an SAE directory written by mechlab, SAELens, or
    Gemma Scope (1 or 2); ``SAE.load`` builds the module from them.

    Raises:
        InputError: the directory is missing, holds none of the known layouts, or an unknown tensor.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"SAE directory {directory} does not exist or is not a directory.")
    if site is not None:
        try:
            Site.parse(site)
        except SiteError as error:
            raise InputError(f"site={site!r} is not a site: {error}") from error
    if (directory / CFG_FILE).is_file():
        cfg = config_from_dict(_read_json(directory / CFG_FILE), site=site, where=str(directory / CFG_FILE))
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise InputError(f"{directory} has {CFG_FILE} but no {WEIGHTS_FILE}.")
        tensors = _read_tensors(weights)
        if cfg.architecture == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
            tensors["threshold"] = tensors.pop("log_threshold").exp()  # SAELens's training checkpoints
    else:
        found = [directory / name for name in GEMMA_SCOPE_FILES if (directory / name).is_file()]
        if not found:
            raise InputError(
                f"{directory} holds no SAE: expected {CFG_FILE} + {WEIGHTS_FILE} (mechlab, SAELens) or "
                f"{' / '.join(GEMMA_SCOPE_FILES)} (Gemma Scope)."
            )
        raw = _read_tensors(found[0])
        tensors = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in raw.items()}
        if "W_enc" not in tensors or "W_dec" not in tensors:
            raise InputError(
                f"{found[0]} lacks W_enc/W_dec (or w_enc/w_dec); found {', '.join(sorted(raw))}."
            )
        cfg = _gemma_scope_config(directory, tensors, site)
    if _is_ones(tensors.get("scaling_factor")):  # SAELens once wrote an all-ones scaling_factor
        del tensors["scaling_factor"]
    extra = sorted(set(tensors) - {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"})
    if extra:
        raise InputError(f"{directory}: unexpected tensor(s) {', '.join(extra)}; mechlab cannot apply them.")
    return cfg, tensors


def _is_ones(tensor: torch.Tensor | None) -> bool:
    return tensor is not None and bool(torch.all(tensor == 1))
