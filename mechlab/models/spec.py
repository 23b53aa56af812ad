"""``ModelSpec``: the arguments ``load_model`` made a model with, so another process can make it too.

``load_model`` records the spec of every model it returns (``spec_of``); ``mechlab.models.stand_in``
sends a model to another process as its spec and loads it there once.
"""

import dataclasses
import hashlib
import weakref
from typing import Any

import torch

from mechlab.errors import InputError

MSG_NO_SPEC = (
    "This model was not returned by mechlab.load_model, so {what} cannot load it again in its workers: "
    "they load each model from its source. Load it with mechlab.load_model(SOURCE) (a trained toy: "
    "save it with mechlab.save_toy and load 'toy:DIR'), or use the in-process executor."
)

# Values per parameter that go into a fingerprint.
SAMPLE = 4096
_SPECS: "weakref.WeakKeyDictionary[Any, ModelSpec]" = weakref.WeakKeyDictionary()
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[tuple[int, ...], str]]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The arguments of ``load_model`` that made a model (``dtype`` as its name, e.g.
    ``"float32"``), so another process can make the same model."""

    source: str
    device: str = "cpu"
    dtype: str | None = None
    weights: str | None = None


def remember(model: Any, spec: ModelSpec) -> None:
    """Record that ``model`` was loaded from ``spec`` (``load_model`` calls it)."""
    try:
        _SPECS[model] = spec
    except TypeError:  # an object that takes no weak reference is not remembered
        pass


def spec_known(item: Any) -> bool:
    """Whether ``item`` is a model ``load_model`` returned (and recorded)."""
    try:
        return item in _SPECS
    except TypeError:  # unhashable
        return False


def spec_of(model: Any, what: str = "this executor") -> ModelSpec:
    """The spec ``load_model`` recorded for ``model``.

    Raises:
        InputError: the model did not come from ``load_model`` (saying what to do instead).
    """
    try:
        spec = _SPECS.get(model)
    except TypeError:
        spec = None
    if spec is None:
        raise InputError(MSG_NO_SPEC.format(what=what))
    return spec


def fingerprint(model: Any) -> str:
    """A digest of every parameter's name, shape, dtype and a strided sample of its values (at most
    ``SAMPLE`` each, as bytes: the same on any device and machine, unlike a float sum). Kept until a
    parameter is changed in place, which bumps its version counter."""
    params = list(model.named_parameters())
    versions = tuple(param._version for _, param in params)
    kept = _FINGERPRINTS.get(model)
    if kept is not None and kept[0] == versions:
        return kept[1]
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in params:
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // SAMPLE)].cpu().contiguous()
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype};".encode())
            digest.update(sample.view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()[:16]
    try:
        _FINGERPRINTS[model] = (versions, value)
    except TypeError:
        pass
    return value
