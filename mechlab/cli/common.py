"""What every command shares: loading the model with a spinner, and the spinner itself."""

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rich.console import Console
from rich.markup import escape

import mechlab

# A command: the parsed arguments and the console in, the exit status out.
Handler = Callable[[argparse.Namespace, Console], int]
# ``add(name, help)``: a sub-command parser with SOURCE, --device and --dtype (``mechlab.cli``).
Add = Callable[[str, str], argparse.ArgumentParser]


@contextmanager
def progress(console: Console, what: str) -> Iterator[Callable[[str], None]]:
    """A rich spinner that shows the current step; yields the ``status`` callback for the API."""
    with console.status(f"[bold]{escape(what)}[/]") as spinner:
        yield lambda message: spinner.update(f"[bold]{escape(what)}:[/] {escape(message)}")


def load(args: argparse.Namespace, console: Console) -> "mechlab.LoadedModel":
    import torch

    dtype = getattr(torch, args.dtype)
    with progress(console, f"Loading {args.source}") as status:
        loaded = mechlab.load_model(args.source, device=args.device, dtype=dtype, status=status)
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
