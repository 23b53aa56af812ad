"""HookedTransformer's hook names on a TransformerBridge.

A TransformerBridge reaches one hook point under several names: its own (``blocks.3.hook_in``,
``blocks.3.attn.o.hook_in``) and HookedTransformer's (``blocks.3.hook_resid_pre``,
``blocks.3.attn.hook_z``); the hook point's ``name`` is whichever the bridge registered first. Code
written for HookedTransformer keys caches by ``hook.name`` and filters every name, so it needs one
name per hook point, HookedTransformer's. ``HookNames`` picks it:

- a hook point reachable under a HookedTransformer name (TransformerLens 2.18's vocabulary,
  ``HT_NAME``) takes that name; ``blocks.L.hook_attn_in`` wins over ``blocks.L.attn.hook_attn_in``
  (the block owns it in HookedTransformer);
- every other hook point (the bridge's own ``embed.hook_in``, ``blocks.L.attn.q.hook_out``, …) is
  not one of HookedTransformer's: it still answers to its bridge names but takes no part in sweeps
  (``names_filter``, caches of everything), as it has no counterpart there.

Rotary models have no ``hook_pos_embed`` in HookedTransformer (the bridge names its rotary table
output so): the name is not given out there.
"""

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

HT_NAME = re.compile(
    r"^(?:hook_(?:embed|pos_embed|tokens)"
    r"|ln_final\.hook_(?:scale|normalized)"
    r"|blocks\.\d+\.(?:"
    r"hook_(?:resid_pre|resid_mid|resid_post|attn_out|mlp_out|attn_in|q_input|k_input|v_input|mlp_in)"
    r"|ln[12]\.hook_(?:scale|normalized)"
    r"|attn\.hook_(?:q|k|v|z|attn_scores|pattern|result|rot_q|rot_k)"
    r"|mlp\.hook_(?:pre|pre_linear|post|mid)))$"
)


def is_ht_name(name: str, *, rotary: bool = False) -> bool:
    """Whether ``name`` is a hook name HookedTransformer (TransformerLens 2.18) has.

    >>> is_ht_name("blocks.3.hook_resid_pre"), is_ht_name("blocks.3.hook_in")
    (True, False)
    >>> is_ht_name("hook_pos_embed", rotary=True)
    False
    """
    if rotary and name == "hook_pos_embed":
        return False
    return HT_NAME.match(name) is not None


@dataclasses.dataclass(frozen=True)
class HookNames:
    """The canonical name of each hook point and every name that reaches one.

    Attributes:
        points: canonical name → hook point, for the hook points HookedTransformer has, in the
            bridge's order (what sweeps iterate).
        lookup: every name a hook point answers to (canonical, bridge and alias names) → its
            canonical name.
        hooks: canonical name → hook point, for every hook point.
    """

    points: Mapping[str, Any]
    lookup: Mapping[str, str]
    hooks: Mapping[str, Any]

    @classmethod
    def of(cls, named: Iterable[tuple[str, Any]], *, rotary: bool) -> "HookNames":
        """Choose names from ``(name, hook point)`` pairs (a bridge's ``hook_dict`` items, in order)."""
        # A rotary model's hook_pos_embed is the bridge's rotary table, which HookedTransformer lacks.
        pairs = [(n, p) for n, p in named if not (rotary and n == "hook_pos_embed")]
        names_of: dict[int, list[str]] = {}
        for name, point in pairs:
            names_of.setdefault(id(point), []).append(name)
        canonical: dict[int, str] = {}
        for _, point in pairs:
            if id(point) in canonical:
                continue
            names = names_of[id(point)]
            ht = [n for n in names if is_ht_name(n, rotary=rotary)]
            if ht:  # the shallowest: blocks.L.hook_attn_in over blocks.L.attn.hook_attn_in
                canonical[id(point)] = min(ht, key=lambda n: n.count("."))
            else:
                canonical[id(point)] = point.name if point.name in names else names[0]
        points: dict[str, Any] = {}
        hooks: dict[str, Any] = {}
        lookup: dict[str, str] = {}
        for name, point in pairs:
            chosen = canonical[id(point)]
            hooks.setdefault(chosen, point)
            if is_ht_name(chosen, rotary=rotary):
                points.setdefault(chosen, point)
            lookup[name] = chosen
        return cls(points=points, lookup=lookup, hooks=hooks)

    def resolve(self, name: str) -> str | None:
        """The canonical name ``name`` reaches, or ``None``."""
        return self.lookup.get(name)
