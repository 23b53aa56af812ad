"""``HookedTransformer``: code written for TransformerLens 2/3 runs on any model mechlab loads.

``HookedTransformer.from_pretrained(source, ...)`` loads ``source`` with ``mechlab.load_model`` (a
TransformerLens 4 ``TransformerBridge`` in compatibility mode), processes the weights as
HookedTransformer's ``from_pretrained`` does by default (``fold_ln``, ``center_writing_weights``,
``center_unembed``, ``fold_value_biases``: TransformerLens 4's ``process_weights``, see
``mechlab.compat.weights``) and makes that bridge a ``HookedTransformer``, a subclass that speaks
HookedTransformer's dialect:

- **hook names**: every hook point's ``name`` is HookedTransformer's (``blocks.L.hook_resid_pre``,
  not the bridge's ``blocks.L.hook_in``); ``hook_dict``, ``names_filter`` and caches see each hook
  point once, under that name; the bridge's names still reach the same hook points
  (``mechlab.compat.names``);
- **weights**: ``W_K``/``W_V``/``b_K``/``b_V`` one per query head, the per-key/value-head tensors as
  ``blocks[L].attn._W_K`` …; zero biases where the checkpoint has none; ``state_dict()`` and
  ``named_parameters()`` under HookedTransformer's names (``blocks.0.attn.W_Q``);
- **caches** (``mechlab.compat.cache.ActivationCache``) take any name of a hook point and include
  the norms' weights when they apply a norm, so logit attributions sum to the logit.

The object is the same bridge: logits, hooks and generation are TransformerLens 4's.
"""

import contextlib
import difflib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechlab.compat.cache import ActivationCache
from mechlab.compat.names import HookNames
from mechlab.compat.weights import ht_components, ht_state_dict, to_bridge_state_dict
from mechlab.errors import (
    MSG_COMPAT_ARG,
    MSG_COMPAT_NO_INIT,
    MSG_COMPAT_REFACTOR_ROTARY,
    MSG_COMPAT_UNGROUP,
    MSG_COMPAT_UNKNOWN_HOOK,
    CompatError,
)
from mechlab.models.hooked import HookedBridge

NamesFilter = str | list[str] | Callable[[str], bool] | None
# HookedTransformer's dtype strings (2.18's DTYPE_FROM_STRING).
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}
# from_pretrained arguments of HookedTransformer that have no meaning for a mechlab source, with why.
UNSUPPORTED = {
    "checkpoint_index": "training checkpoints are a TransformerLens model-zoo feature.",
    "checkpoint_value": "training checkpoints are a TransformerLens model-zoo feature.",
    "hf_model": "mechlab loads the model itself from the source string.",
    "tokenizer": "mechlab loads the model's own tokenizer from the source.",
    "first_n_layers": "mechlab loads whole models.",
    "n_ctx": "the context length is the model's own.",
}


class _HookDict(dict[str, Any]):
    """``{canonical name: hook point}``; lookups (``in``, ``[]``, ``get``) also take every other name a
    hook point answers to, so the bridge's own names keep working."""

    def __init__(self, points: dict[str, Any], names: HookNames) -> None:
        super().__init__(points)
        self._names = names

    def _find(self, key: object) -> str | None:
        return self._names.resolve(key) if isinstance(key, str) else None

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or self._find(key) is not None

    def __getitem__(self, key: str) -> Any:
        if super().__contains__(key):
            return super().__getitem__(key)
        canonical = self._find(key)
        if canonical is None:
            raise KeyError(key)
        return self._names.hooks[canonical]

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[key] if key in self else default


class HookedTransformer(HookedBridge):
    """A TransformerLens 4 bridge that behaves as TransformerLens 2's ``HookedTransformer`` (see the
    module docstring). Make one with ``HookedTransformer.from_pretrained(source)``."""

    cache_class = ActivationCache
    _ht_names: HookNames
    _ht_folded: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise CompatError(MSG_COMPAT_NO_INIT)

    # ---- loading ----

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        refactor_factored_attn_matrices: bool = False,
        checkpoint_index: int | None = None,
        checkpoint_value: int | None = None,
        hf_model: Any = None,
        device: str | torch.device | None = None,
        n_devices: int = 1,
        tokenizer: Any = None,
        move_to_device: bool = True,
        fold_value_biases: bool = True,
        default_prepend_bos: bool | None = None,
        default_padding_side: Literal["left", "right"] = "right",
        dtype: str | torch.dtype = "float32",
        first_n_layers: int | None = None,
        n_ctx: int | None = None,
        **from_pretrained_kwargs: Any,
    ) -> "HookedTransformer":
        """Load any mechlab source as a ``HookedTransformer`` (HookedTransformer's signature).

        Args:
            model_name: a mechlab source (``smollm2``, ``PATH.gguf``, ``hf:DIR``, ``toy:tiny`` …;
                see ``mechlab.load_model``), not a TransformerLens model-zoo name.
            fold_ln, center_writing_weights, center_unembed, fold_value_biases,
                refactor_factored_attn_matrices: weight processing, with HookedTransformer's defaults
                and meaning (``mechlab.compat.weights``). ``center_unembed`` shifts each position's
                logits by a constant; the others leave logits unchanged.
            device: where the model runs; ``None`` means ``cpu`` (mechlab never picks a GPU itself).
            n_devices: must be 1.
            move_to_device: accepted; the model is loaded onto ``device`` directly.
            default_prepend_bos: override the model's own BOS convention for string inputs.
            default_padding_side: ``"right"`` or ``"left"``.
            dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, or a ``torch.dtype``.

        Raises:
            CompatError: an argument that has no meaning for a mechlab source, or
                ``refactor_factored_attn_matrices`` on a rotary model.
        """
        given = dict(
            checkpoint_index=checkpoint_index,
            checkpoint_value=checkpoint_value,
            hf_model=hf_model,
            tokenizer=tokenizer,
            first_n_layers=first_n_layers,
            n_ctx=n_ctx,
        )
        for arg, value in given.items():
            if value is not None:
                raise CompatError(MSG_COMPAT_ARG.format(arg=arg, why=UNSUPPORTED[arg]))
        if n_devices != 1:
            raise CompatError(
                MSG_COMPAT_ARG.format(arg="n_devices", why="mechlab runs a model on one device.")
            )
        if from_pretrained_kwargs:
            arg = sorted(from_pretrained_kwargs)[0]
            raise CompatError(MSG_COMPAT_ARG.format(arg=arg, why="it is a Hugging Face loading option."))
        from mechlab.models.load import load_model

        if isinstance(dtype, str) and dtype not in DTYPES:
            why = f"{dtype!r} is not a dtype; expected one of {', '.join(DTYPES)} or a torch.dtype."
            raise CompatError(MSG_COMPAT_ARG.format(arg="dtype", why=why))
        torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        bridge = load_model(model_name, device=device or "cpu", dtype=torch_dtype).model
        return cls.from_bridge(
            bridge,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            default_prepend_bos=default_prepend_bos,
            default_padding_side=default_padding_side,
        )

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str, **kwargs: Any) -> "HookedTransformer":
        """``from_pretrained`` with every weight-processing option off (the weights as the source has
        them); other keyword arguments as ``from_pretrained``."""
        processing = dict.fromkeys(
            (
                "fold_ln",
                "center_writing_weights",
                "center_unembed",
                "fold_value_biases",
                "refactor_factored_attn_matrices",
            ),
            False,
        )
        return cls.from_pretrained(model_name, **{**processing, **kwargs})

    @classmethod
    def from_bridge(
        cls,
        bridge: TransformerBridge,
        *,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
        default_prepend_bos: bool | None = None,
        default_padding_side: Literal["left", "right"] = "right",
    ) -> "HookedTransformer":
        """Process ``bridge``'s weights and make it a ``HookedTransformer`` (in place: the same object,
        returned). ``bridge`` must not have been processed before."""
        cfg = bridge.cfg
        if refactor_factored_attn_matrices and cfg.positional_embedding_type == "rotary":
            raise CompatError(MSG_COMPAT_REFACTOR_ROTARY)
        options = dict(
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )
        if any(options.values()):
            bridge.enable_compatibility_mode(no_processing=False, disable_warnings=True, **options)
        bridge.__class__ = cls
        model: HookedTransformer = bridge  # type: ignore[assignment]
        model._ht_folded = fold_ln
        if default_prepend_bos is not None:
            cfg.default_prepend_bos = default_prepend_bos
        cfg.default_padding_side = default_padding_side
        if getattr(model.tokenizer, "padding_side", None) is not None:
            model.tokenizer.padding_side = default_padding_side
        if not hasattr(cfg, "ungroup_grouped_query_attention"):
            cfg.ungroup_grouped_query_attention = False
        ht_components(model)
        model._install_hook_names()
        return model

    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """HookedTransformer's in-place processing (TransformerLens 4 processes a bridge once: a second
        call logs a warning and changes nothing)."""
        if refactor_factored_attn_matrices and self.cfg.positional_embedding_type == "rotary":
            raise CompatError(MSG_COMPAT_REFACTOR_ROTARY)
        processed = self._weights_processed
        self.process_weights(
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )
        if not processed:
            self._ht_folded = fold_ln

    def process_weights(self, *args: Any, **kwargs: Any) -> None:
        """TransformerLens 4's ``process_weights`` (it reads the bridge's own ``state_dict``)."""
        self._bridge_keys = True
        try:
            super().process_weights(*args, **kwargs)
        finally:
            self._bridge_keys = False
        self._install_hook_names()

    def enable_compatibility_mode(self, *args: Any, **kwargs: Any) -> None:
        self._bridge_keys = True
        try:
            super().enable_compatibility_mode(*args, **kwargs)
        finally:
            self._bridge_keys = False
        self._install_hook_names()

    def set_ungroup_grouped_query_attention(self, ungroup_grouped_query_attention: bool) -> None:
        """Only ``False`` (the default) is supported: ``hook_k``/``hook_v`` stay per key/value head."""
        if ungroup_grouped_query_attention:
            n_kv = int(getattr(self.cfg, "n_key_value_heads", None) or self.cfg.n_heads)
            raise CompatError(
                MSG_COMPAT_UNGROUP.format(
                    n_kv=n_kv, n_heads=self.cfg.n_heads, groups=int(self.cfg.n_heads) // n_kv
                )
            )

    # ---- hook names ----

    def _install_hook_names(self) -> None:
        rotary = getattr(self.cfg, "positional_embedding_type", "standard") == "rotary"
        names = HookNames.of(TransformerBridge.hook_dict.fget(self).items(), rotary=rotary)  # type: ignore[attr-defined]
        for name, point in names.hooks.items():
            point.name = name
        self._ht_names = names

    def canonical_hook_name(self, name: str) -> str | None:
        """The name caches and ``hook.name`` use for the hook point ``name`` reaches (``None`` if none)."""
        return self._ht_names.resolve(name)

    def _canonical(self, name: str) -> str:
        canonical = self._ht_names.resolve(name)
        if canonical is None:
            close = difflib.get_close_matches(name, list(self._ht_names.lookup), n=3)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise KeyError(MSG_COMPAT_UNKNOWN_HOOK.format(name=name, hint=hint))
        return canonical

    @property
    def hook_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{name: hook point}``, each of HookedTransformer's hook points once under its name (hook
        points switched off by ``cfg.use_attn_result`` & co. left out, as they never fire); lookups
        also take the bridge's names."""
        points = {n: p for n, p in self._ht_names.points.items() if self._gated_hook_reason(n) is None}
        points.update((n, self._ht_names.hooks[n]) for n in getattr(self, "_named_extras", ()))
        return _HookDict(points, self._ht_names)

    def _resolve_hook_point(self, name: str, aliases: Any, hook_dict: Any) -> tuple[str, Any]:
        canonical = self._canonical(name)
        self._check_hook_fireable(name, canonical)
        return canonical, self._ht_names.hooks[canonical]

    def _canonical_filter(self, names_filter: NamesFilter) -> NamesFilter:
        if isinstance(names_filter, str):
            return self._canonical(names_filter)
        if isinstance(names_filter, list):
            return [self._canonical(n) for n in names_filter]
        return names_filter

    def add_hook(  # type: ignore[override]
        self,
        name: str | Callable[[str], bool],
        hook_fn: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Attach ``hook_fn`` to the hook point ``name`` (any of its names) or to every hook point whose
        name a filter accepts."""
        if level is not None or prepend:
            for point in self._points_for(name):
                self.check_hooks_to_add(point, point.name, hook_fn, dir=dir)
                point.add_hook(hook_fn, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)
            return
        if isinstance(name, str):
            canonical = self._canonical(name)
            self._check_hook_fireable(canonical)
            self._add_fn_to_hook_point(self._ht_names.hooks[canonical], canonical, hook_fn, dir, is_permanent)
            return
        super().add_hook(name, hook_fn, dir=dir, is_permanent=is_permanent)

    def _points_for(self, name: str | Callable[[str], bool]) -> list[Any]:
        if isinstance(name, str):
            return [self._ht_names.hooks[self._canonical(name)]]
        return [p for n, p in self.hook_dict.items() if name(n)]

    @contextlib.contextmanager
    def _sweeping(self, names_filter: NamesFilter) -> Iterator[NamesFilter]:
        """``names_filter`` with canonical names; hook points it names that HookedTransformer lacks
        (the bridge's ``embed.hook_in`` …) join ``hook_dict`` meanwhile, so the sweep finds them."""
        canonical = self._canonical_filter(names_filter)
        named = (
            [canonical] if isinstance(canonical, str) else canonical if isinstance(canonical, list) else []
        )
        self._named_extras = [n for n in named if n not in self._ht_names.points]
        try:
            yield canonical
        finally:
            self._named_extras = []

    def run_with_cache(self, *args: Any, names_filter: NamesFilter = None, **kwargs: Any) -> Any:  # type: ignore[override]
        with self._sweeping(names_filter) as canonical:
            return super().run_with_cache(*args, names_filter=canonical, **kwargs)

    def get_caching_hooks(self, names_filter: NamesFilter = None, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with self._sweeping(names_filter) as canonical:
            return super().get_caching_hooks(canonical, *args, **kwargs)

    # ---- weights ----

    def state_dict(self, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:  # type: ignore[override]
        """The weights under HookedTransformer's names (``blocks.0.attn.W_Q``; ``_W_K``/``_W_V`` under
        grouped-query attention), detached; with ``destination`` or ``prefix``, ``nn.Module``'s."""
        if destination is not None or prefix or getattr(self, "_bridge_keys", False):
            return super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        weights = ht_state_dict(self, folded=self._ht_folded)
        return {k: v if keep_vars else v.detach() for k, v in weights.items()}

    def bridge_state_dict(self) -> dict[str, Tensor]:
        """The bridge's own ``state_dict`` (keys such as ``blocks.0.attn.q.weight``)."""
        return dict(TransformerBridge.state_dict(self))

    def named_parameters(  # type: ignore[override]
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` under HookedTransformer's names. The tensors are the model's weights in
        HookedTransformer's layout: views of the underlying parameters where a view exists (in-place
        edits reach the model), not leaf ``nn.Parameter``s; ``parameters()`` yields those."""
        for name, value in ht_state_dict(self, folded=self._ht_folded).items():
            yield (f"{prefix}.{name}" if prefix else name), value

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        """Load a state dict under HookedTransformer's names (as ``state_dict()`` gives) or the
        bridge's own."""
        if any(".W_" in k or "._W_" in k or ".b_" in k or k.endswith((".w", ".b")) for k in state_dict):
            state_dict = to_bridge_state_dict(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def b_U(self) -> Tensor:  # type: ignore[override]
        bias = getattr(self.unembed, "b_U", None)
        if isinstance(bias, Tensor):
            return bias
        return torch.zeros(int(self.cfg.d_vocab_out), device=self.W_U.device, dtype=self.W_U.dtype)
