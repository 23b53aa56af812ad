"""A one-line migration for code written for TransformerLens 2/3's ``HookedTransformer``.

Replace ``from transformer_lens import HookedTransformer, utils, ...`` with::

    from mechlab.compat import HookedTransformer, utils, ActivationCache, FactoredMatrix, HookPoint

and ``HookedTransformer.from_pretrained(source)`` loads any mechlab source (``"smollm2"``, a
``.gguf`` file, ``hf:DIR``, ``toy:tiny`` …) with HookedTransformer's weight processing, hook names,
per-query-head key/value weights and parameter names (``mechlab.compat.model``). The submodules
``utils``, ``hook_points``, ``patching``, ``head_detector`` and ``evals`` stand for
``transformer_lens.<name>`` (the last three are TransformerLens 4's modules of those names), so
``import transformer_lens.utils as utils`` becomes ``import mechlab.compat.utils as utils``.
Importing this package imports TransformerLens.
"""

from transformer_lens import FactoredMatrix

from mechlab.compat import evals, head_detector, patching, utils
from mechlab.compat.cache import ActivationCache
from mechlab.compat.hook_points import HookedRootModule, HookPoint
from mechlab.compat.model import HookedTransformer

__all__ = [
    "ActivationCache",
    "FactoredMatrix",
    "HookPoint",
    "HookedRootModule",
    "HookedTransformer",
    "evals",
    "head_detector",
    "patching",
    "utils",
]
