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


def model_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--weights``: how a command loads its model (``load``)."""
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    p.add_argument(
        "--weights",
        "--dtype",
        dest="weights",
        default="float32",
        choices=["float32", "bfloat16", "float16", "quantized"],
        help="loading mode: the parameters' dtype (float32 matches the original most closely), or "
        "quantized: a GGUF file's matrices stay in their blocks (about the file's size in memory); "
        "`mechlab info SOURCE --plan` shows what each needs",
    )


def load(args: argparse.Namespace, console: Console) -> "mechlab.LoadedModel":
    with progress(console, f"Loading {args.source}") as status:
        loaded = mechlab.load_model(args.source, device=args.device, weights=args.weights, status=status)
    cached = " (converted copy from cache)" if loaded.info.from_cache else ""
    console.print(f"Loaded {escape(args.source)} in {loaded.info.load_seconds:.1f} s{cached}")
    return loaded


def add_executor(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and ``--address``: where a sweeping command runs its tasks."""
    parser.add_argument(
        "--executor",
        default="in-process",
        help="where the sweep's tasks run: in-process (default) or ray (needs `pip install "
        "'mechlab[ray]'`), or any executor installed in the mechlab.executors group",
    )
    parser.add_argument(
        "--address",
        help="with --executor ray: 'auto' (the cluster `ray start --head` runs here) or "
        "ray://HOST:PORT; default: start a local Ray instance",
    )


@contextmanager
def executor_from(args: argparse.Namespace) -> Iterator["mechlab.Executor"]:
    """The executor ``--executor``/``--address`` name (made before the model loads, so a bad name
    fails first), closed when the command is done (a Ray executor stops its workers)."""
    if args.address is not None and args.executor == "in-process":
        raise mechlab.InputError("--address names a Ray cluster; pass it with --executor ray.")
    options = {} if args.address is None else {"address": args.address}
    if args.executor == "in-process":
        executor = mechlab.resolve_executor(None)
    else:
        executor = mechlab.ExecutorRegistry.from_entry_points().create(args.executor, **options)
    try:
        yield executor
    finally:
        close = getattr(executor, "close", None)
        if callable(close):
            close()


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
