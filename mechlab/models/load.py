"""``load_model``: turn a source string into a hooked model, its tokenizer and a ``ModelInfo``.

The hooked model is a TransformerLens 4 ``TransformerBridge`` in compatibility mode
(``enable_compatibility_mode(no_processing=True)``): HookedTransformer hook names,
``run_with_cache``, ``run_with_hooks`` and ``ActivationCache``, with the weights exactly as the
original model has them (no LayerNorm folding or centring), so logits match the source model.

It tokenizes the way the model's own runtime does: BOS is prepended only when the model's
tokenizer metadata asks for it (SmolLM2's GGUF says ``add_bos_token = false``).
"""

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mechlab.errors import (
    MSG_PATH_MISSING,
    MSG_SYMLINK_LOOP,
    MSG_UNKNOWN_SOURCE,
    MSG_UNSUPPORTED_TL_ARCH,
    ModelNotFoundError,
    SourceError,
    UnsupportedArchitectureError,
)
from mechlab.models import bundled, gguf, hf, ollama, toy
from mechlab.models.info import ModelInfo

Status = Callable[[str], None]
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_SCHEMES = ("gguf", "ollama", "hf", "toy")


class LoadedModel(NamedTuple):
    """``model, tokenizer, info = load_model(...)``; also usable by attribute."""

    model: Any
    tokenizer: Any
    info: ModelInfo


def _quiet(_: str) -> None:
    return None


def load_model(
    source: str = "smollm2",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    status: Status | None = None,
) -> LoadedModel:
    """Load a model from any supported source as a HookedTransformer-protocol model.

    Args:
        source: ``smollm2`` (bundled), ``PATH.gguf`` / ``gguf:PATH``, ``ollama:NAME[:TAG]``,
            a Hugging Face directory (``DIR`` / ``hf:DIR``), a Hub name (``hf:ORG/NAME``),
            or ``toy:...`` (see ``mechlab.models.toy``).
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        dtype: parameter dtype; float32 reproduces the source's logits most closely.
        status: called with a short message before each slow step (conversion, hashing…).

    Returns:
        ``LoadedModel(model, tokenizer, info)``.

    Raises:
        SourceError, ModelNotFoundError (and subclasses), CorruptModelError,
        UnsupportedArchitectureError — each saying what was wrong and what to do.
    """
    start = time.perf_counter()
    say = status or _quiet
    kind, target = resolve_source(source)
    if kind == "toy":
        model, info = _load_toy(source, target, device=device, dtype=dtype)
    elif kind == "gguf":
        model, info = _load_gguf(source, Path(target), device=device, dtype=dtype, say=say)
    else:
        model, info = _load_hf(source, kind, target, device=device, dtype=dtype, say=say)
    info = dataclasses.replace(info, load_seconds=round(time.perf_counter() - start, 3))
    return LoadedModel(model, getattr(model, "tokenizer", None), info)


def resolve_source(source: str) -> tuple[str, str]:
    """Classify a source string: ``(kind, target)`` with kind in gguf / hf / hub / toy.

    A Hub name that TransformerLens knows by another name comes back as its Hub name
    (``gpt2-small`` → ``("hub", "gpt2")``). A string that looks like a path (``./x``, ``/x``, ``~/x``,
    ``x.gguf``, ``a/b/c``) but names nothing raises ``ModelNotFoundError``; it never reaches the Hub.
    """
    text = source.strip()
    if not text:
        raise SourceError(MSG_UNKNOWN_SOURCE.format(source=source, hint="The source is empty."))
    if text.lower() in bundled.ALIASES:
        return "gguf", str(bundled.bundled_gguf_path())
    scheme, sep, rest = text.partition(":")
    if sep and scheme in _SCHEMES:
        if scheme == "gguf":
            return "gguf", rest
        if scheme == "ollama":
            return "gguf", str(ollama.resolve(rest))
        if scheme == "toy":
            return "toy", rest
        path = Path(rest).expanduser()
        if path.exists():
            return "hf", rest
        if _looks_like_path(rest):
            raise _missing(source, path)
        return "hub", hf.official_name(rest)
    path = Path(text).expanduser()
    if path.is_file():
        return "gguf", text
    if path.is_dir():
        if toy.is_checkpoint(path):
            return "toy", text
        return "hf", text
    if _looks_like_path(text):
        raise _missing(source, path)
    if sep and len(scheme) > 1:
        hint = f"Unknown scheme {scheme!r}: known schemes are {', '.join(s + ':' for s in _SCHEMES)}."
        raise SourceError(MSG_UNKNOWN_SOURCE.format(source=source, hint=hint))
    if _HUB_NAME.match(text):
        return "hub", hf.official_name(text)
    raise SourceError(MSG_UNKNOWN_SOURCE.format(source=source, hint="It is not a path that exists."))


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` can only be meant as a file or directory: Hub names are ``NAME`` or ``ORG/NAME``."""
    return (
        text.startswith((".", "/", "~"))
        or text.lower().endswith(".gguf")
        or "\\" in text
        or text.count("/") > 1
    )


def _missing(source: str, path: Path) -> ModelNotFoundError:
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        pass
    except (OSError, RuntimeError) as error:  # ELOOP: Python 3.11 raises RuntimeError, 3.13 OSError
        return ModelNotFoundError(MSG_SYMLINK_LOOP.format(source=source, path=path, error=error))
    return ModelNotFoundError(MSG_PATH_MISSING.format(source=source, resolved=path.resolve()))


def wrap_hf_model(
    hf_model: Any,
    tokenizer: Any,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    prepend_bos: bool | None = None,
) -> Any:
    """Wrap a loaded transformers causal LM in a TransformerBridge in compatibility mode.

    ``prepend_bos=None`` keeps whatever the tokenizer does by itself.
    """
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    architecture = type(hf_model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            MSG_UNSUPPORTED_TL_ARCH.format(
                arch=architecture,
                tl_version=gguf.transformer_lens_version(),
                supported=", ".join(sorted(a for a in SUPPORTED_ARCHITECTURES if "CausalLM" in a)),
            )
        )
    gguf.strip_quantization(hf_model)
    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    bridge = build_bridge_from_module(
        hf_model, architecture, hf_config=hf_model.config, tokenizer=tokenizer, device=device, dtype=dtype
    )
    bridge.enable_compatibility_mode(no_processing=True)
    if tokenizer is not None:
        bridge.cfg.default_prepend_bos = (
            bool(bridge.cfg.tokenizer_prepends_bos) if prepend_bos is None else prepend_bos
        )
    return bridge.eval()


def _info_from(model: Any, **fields: Any) -> ModelInfo:
    cfg = model.cfg
    return ModelInfo(
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        **fields,
    )


def _load_gguf(
    source: str, path: Path, *, device: Any, dtype: torch.dtype, say: Status
) -> tuple[Any, ModelInfo]:
    say(f"checking {path.name}")
    converted, header, sha, was_cached = gguf.ensure_converted(path.expanduser(), status=say)
    say("loading converted weights" if was_cached else "loading the new converted copy")
    try:
        hf_model, tokenizer = hf.load_dir(converted, dtype=torch.float32)
    except Exception:
        if not was_cached:  # transformers cannot read the copy it just wrote: later loads must not reuse it
            gguf.discard_converted(converted)
        raise
    model = wrap_hf_model(hf_model, tokenizer, device=device, dtype=dtype, prepend_bos=header.add_bos)
    info = _info_from(
        model,
        source=source,
        kind="gguf",
        path=str(path),
        sha256=sha,
        architecture=type(model.original_model).__name__,
        original_architecture=header.architecture,
        quantization=header.quantization,
        chat_template=getattr(tokenizer, "chat_template", None) or header.chat_template,
        prepends_bos=bool(model.cfg.default_prepend_bos),
        converted_cache=str(converted),
        from_cache=was_cached,
    )
    return model, info


def _load_hf(
    source: str, kind: str, target: str, *, device: Any, dtype: torch.dtype, say: Status
) -> tuple[Any, ModelInfo]:
    say(f"loading {target}")
    if kind == "hf":
        hf_model, tokenizer = hf.load_dir(Path(target).expanduser(), dtype=torch.float32)
    else:
        requested = source.strip().removeprefix("hf:")
        hf_model, tokenizer = hf.load_hub(target, dtype=torch.float32, requested=requested)
    model = wrap_hf_model(hf_model, tokenizer, device=device, dtype=dtype)
    info = _info_from(
        model,
        source=source,
        kind=kind,
        path=target,
        sha256=None,
        architecture=type(model.original_model).__name__,
        original_architecture=getattr(hf_model.config, "model_type", None),
        quantization=hf.storage_dtypes(Path(target).expanduser()) if kind == "hf" else {},
        chat_template=getattr(tokenizer, "chat_template", None),
        prepends_bos=bool(model.cfg.default_prepend_bos) if tokenizer is not None else False,
    )
    return model, info


def _load_toy(source: str, target: str, *, device: Any, dtype: torch.dtype) -> tuple[Any, ModelInfo]:
    path = Path(target).expanduser()
    if target and toy.is_checkpoint(path):
        model, _ = toy.load_checkpoint(path, device=device, dtype=dtype)
        where: str | None = str(path)
    else:
        model = toy.build(toy.parse_spec(target), device=device, dtype=dtype)
        where = None
    model.enable_compatibility_mode(no_processing=True)
    info = _info_from(
        model,
        source=source,
        kind="toy",
        path=where,
        sha256=None,
        architecture="TransformerLensNative",
        original_architecture=None,
        quantization={},
    )
    return model.eval(), info
