"""``ActivationCache`` as HookedTransformer code uses it: keyed by HookedTransformer's hook names.

Entries are stored under each hook point's canonical name (``mechlab.compat.names``); reading one
under any other name it answers to (``cache["blocks.0.hook_in"]``, the bridge's name for
``blocks.0.hook_resid_pre``) finds the same tensor. Norm-applying methods include the norm's weight
(``mechlab.models.hooked.NormAwareCache``), so logit attributions sum to the logit whether or not the
weights were folded.
"""

from typing import Any

from torch import Tensor

from mechlab.models.hooked import NormAwareCache

GRAD = "_grad"


class ActivationCache(NormAwareCache):
    """TransformerLens's ``ActivationCache``; string keys may be any name of a hook point."""

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, str) and key not in self.cache_dict:
            canonical = self._canonical(key)
            if canonical is not None and canonical in self.cache_dict:
                return self.cache_dict[canonical]
        return super().__getitem__(key)

    def _canonical(self, key: str) -> str | None:
        resolve = getattr(self.model, "canonical_hook_name", None)
        if resolve is None:
            return None
        base, suffix = (key[: -len(GRAD)], GRAD) if key.endswith(GRAD) else (key, "")
        canonical = resolve(base)
        return None if canonical is None else canonical + suffix
