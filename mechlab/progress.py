"""Progress reporting: one protocol for every long-running call.

Every long call takes ``progress=``, a callable that receives a state with ``done`` and ``total``
(``None`` when unknown) after each step: a batch of patched variants (``patch``, ``path_patch``), a
batch of prompts written to disk (``capture_dataset``), a batch of detector samples
(``run_detectors``), a stage of the report (``explain``: ``ExplainProgress``, which also names the
stage), a logged training step (``train_induction_toy``: ``TrainStep``, with the loss).
``RichProgress`` draws a rich progress bar for any of them; the library itself never prints.

    >>> import mechlab, torch
    >>> model = mechlab.load_model("toy:tiny").model
    >>> seen = []
    >>> _ = mechlab.patch(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 4, 3]]), "resid_pre",
    ...                   mechlab.LogitDiff(5, 6), batch_size=1, progress=seen.append)
    >>> [(s.done, s.total) for s in seen]
    [(1, 2), (2, 2)]
"""

import dataclasses
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, TypeAlias, runtime_checkable


@runtime_checkable
class ProgressState(Protocol):
    """What a progress callback receives: steps ``done`` of ``total`` (``None``: unknown)."""

    @property
    def done(self) -> int: ...

    @property
    def total(self) -> int | None: ...


Progress: TypeAlias = Callable[[ProgressState], None]


@dataclasses.dataclass(frozen=True)
class Step:
    """A plain progress state: ``done`` of ``total`` steps."""

    done: int
    total: int | None


@dataclasses.dataclass(frozen=True)
class SweepProgress:
    """Where a patching sweep is: ``done`` of ``total`` variants scored."""

    done: int
    total: int


class RichProgress:
    """A rich progress bar for any ``progress=`` argument; use as a context manager.

    with mechlab.RichProgress("Patching") as bar:
        mechlab.patch(model, clean, corrupted, "z", metric, progress=bar)
    """

    def __init__(self, description: str = "Working", *, transient: bool = False, console: Any = None) -> None:
        """``transient``: remove the bar when done; ``console``: a ``rich.console.Console``."""
        from rich.progress import Progress as Bar

        self._bar = Bar(transient=transient, console=console)
        self._task = self._bar.add_task(description, total=None)

    def __enter__(self) -> "RichProgress":
        self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._bar.stop()

    def __call__(self, state: ProgressState) -> None:
        self._bar.update(self._task, completed=state.done, total=state.total)
