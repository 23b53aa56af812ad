"""Sending a model to another process as what made it, and loading it there once.

An executor that runs a sweep's tasks in other processes (``mechlab.executors.ray``) cannot send the
live model: it sends a ``StandIn``, the model's ``ModelSpec`` (the source string and the loading
options ``load_model`` was given, a few hundred bytes) with a fingerprint of its weights, and each
worker process loads the model once (``load_spec`` keeps one copy per spec per process).

A worker that loads weights other than the driver's (a model trained or edited after loading, a file
replaced on disk) refuses to compute rather than return other numbers.
"""

import dataclasses
from typing import Any

import torch

from mechlab.errors import InputError
from mechlab.models.load import load_model
from mechlab.models.spec import ModelSpec, fingerprint, spec_of

MSG_CHANGED = (
    "The model loaded from {source!r} in a worker has other weights than the driver's model "
    "(fingerprint {got} instead of {expected}): the driver's copy was changed after loading, or the "
    "file changed on disk. Save the changed model and load it from there (a toy: mechlab.save_toy), "
    "or use the in-process executor."
)

# Models loaded in this process by spec, and their fingerprints.
_LOADED: dict[ModelSpec, Any] = {}
_CHECKED: dict[ModelSpec, str] = {}


def load_spec(spec: ModelSpec) -> Any:
    """The model ``spec`` names, loaded once per process (later calls return the same one)."""
    model = _LOADED.get(spec)
    if model is None:
        dtype = None if spec.dtype is None else getattr(torch, spec.dtype)
        model = load_model(spec.source, device=spec.device, dtype=dtype, weights=spec.weights).model
        _LOADED[spec] = model
    return model


@dataclasses.dataclass(frozen=True)
class StandIn:
    """What travels in place of a model: its spec and the driver's fingerprint of its weights."""

    spec: ModelSpec
    fingerprint: str

    def resolve(self) -> Any:
        """The model, loaded (once per process) and checked against the driver's fingerprint.

        Raises:
            InputError: the weights loaded here differ from the driver's.
        """
        model = load_spec(self.spec)
        checked = _CHECKED.get(self.spec)
        if checked is None:
            checked = _CHECKED[self.spec] = fingerprint(model)
        if checked != self.fingerprint:
            raise InputError(
                MSG_CHANGED.format(source=self.spec.source, got=checked, expected=self.fingerprint)
            )
        return model


def stand_in(model: Any, what: str = "this executor") -> StandIn:
    """What to send in place of ``model`` to another process."""
    return StandIn(spec_of(model, what), fingerprint(model))


def load_stand_in(item: StandIn) -> Any:
    """Unpickling a ``StandIn`` sent in place of a model gives the model (``StandIn.resolve``)."""
    return item.resolve()
