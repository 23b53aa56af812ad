"""``transformer_lens.hook_points`` as 2.18 had it: ``HookPoint``, ``LensHandle`` and
``HookedRootModule`` (which TransformerLens 4 moved to ``transformer_lens.HookedRootModule``)."""

from transformer_lens.hook_points import HookPoint, LensHandle
from transformer_lens.HookedRootModule import HookedRootModule

__all__ = ["HookPoint", "HookedRootModule", "LensHandle"]
