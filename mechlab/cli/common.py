"""What every command shares: loading the model with a spinner, and the spinner itself."""

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

import mechlab

# A command: the parsed arguments and the console in, the exit status out.
Handler = Callable[[argparse.Namespace, Console], int]
# ``add(name, help)``: a sub-command parser with SOURCE, --device and --weights (``mechlab.cli``).
Add = Callable[[str, str], argparse.ArgumentParser]


@contextmanager
def progress(console: Console, what: str) -> Iterator[Callable[[str], None]]:
    """A rich spinner that shows the current step; yields the ``status`` callback for the API."""
    with console.status(f"[bold]{escape(what)}[/]") as spinner:
        yield lambda message: spinner.update(f"[bold]{escape(what)}:[/] {escape(message)}")


def load(args: argparse.Namespace, console: Console) -> "mechlab.LoadedModel":
    with progress(console, f"Loading {args.source}") as status:
        loaded = mechlab.load_model(args.source, device=args.device, weights=args.weights, status=status)
    cached = " (converted copy from cache)" if loaded.info.from_cache else ""
    console.print(f"Loaded {escape(args.source)} in {loaded.info.load_seconds:.1f} s{cached}")
    return loaded


def outputs(args: argparse.Namespace, *flags: str) -> dict[str, Path]:
    """The files a command will write (``--out``, ``--json``, …), checked before the model loads:
    each absent or a regular file, writable (or ``--force``), and no two the same."""
    named = {f"--{flag.replace('_', '-')}": getattr(args, flag, None) for flag in flags}
    with mechlab.replacing_read_only() if getattr(args, "force", False) else nullcontext():
        checked = mechlab.check_targets({k: None if v is None else Path(v) for k, v in named.items()})
    return checked


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a temperature: 0 is greedy)."""
    value = _number(text, float, "a number >= 0")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: ``"0,12,-1"`` → ``[0, 12, -1]``; at least one integer."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,12,-1; got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, such as 0,12,-1; got {text!r}")
    return values


def _number(text: str, kind: type, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
