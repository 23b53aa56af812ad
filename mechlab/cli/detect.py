"""The detector sub-commands: ``detect`` (score every head), ``detectors`` (list the installed
plugins) and ``train-toy`` (train the induction toy model).

Registered into ``mechlab.cli`` by ``add_detect_parsers``.
"""

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mechlab
from mechlab.cli.common import Add, Handler, add_executor, executor_from, load, outputs, positive_int


def _sample_count(text: str) -> int:
    """argparse type: an integer >= 2 (a 95% interval needs at least two independent batches)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"expected at least 2 random sequences (the 95% interval needs two or more), got {value}"
        )
    return value


def detector_table(result: "mechlab.DetectorResult", top: int) -> Table:
    control = result.control_samples is not None
    table = Table(title=escape(f"{result.name}: {result.description}"), title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("head")
    table.add_column("score", justify="right")
    table.add_column("95% interval", justify="right")
    table.add_column("chance", justify="right")
    table.add_column("baseline", justify="right")
    if control:
        table.add_column("no repeat", justify="right")
    table.add_column("verdict")
    colours = {"detected": "bold green", "positional": "yellow", "weak": "dim", "chance": "dim"}
    for rank, row in enumerate(result.top(top), start=1):
        cells = [str(rank), escape(row.label), f"{row.score:.3f}", f"[{row.low:.3f}, {row.high:.3f}]"]
        cells += [f"{row.chance:.3f}", f"{row.baseline:.3f}"]
        if control:
            cells.append(f"{row.control:.3f}")
        cells.append(f"[{colours[row.verdict]}]{row.verdict}[/]")
        table.add_row(*cells)
    return table


def cmd_detect(args: argparse.Namespace, console: Console) -> int:
    from rich.progress import Progress

    outputs(args, "html", "json")
    with executor_from(args) as executor:
        loaded = load(args, console)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("Scoring heads on repeated random tokens", total=args.samples)
            report = mechlab.run_detectors(
                loaded.model,
                args.detector or None,
                n_samples=args.samples,
                seq_len=args.seq_len,
                seed=args.seed,
                progress=lambda state: bar.update(task, completed=state.done),
                executor=executor,
            )
        settings = report.settings
        console.print(
            f"{settings['n_samples']} sequences of BOS + 2 × {settings['seq_len']} random tokens "
            f"(seed {settings['seed']}), {settings['seconds']:.1f} s"
        )
        for result in report.values():
            console.print(detector_table(result, args.top))
        for name, message in report.failures.items():
            console.print(f"[bold red]{escape(name)} failed:[/] {escape(message)}", highlight=False)
        if args.html:
            written = report.save_html(args.html, title=f"mechlab detect {args.source}")
            console.print(f"Wrote {escape(str(written))}")
        if args.json:
            console.print(f"Wrote {escape(str(report.save(args.json)))}")
        return 1 if report.failures else 0


def cmd_detectors(args: argparse.Namespace, console: Console) -> int:
    registry = mechlab.DetectorRegistry.from_entry_points()
    table = Table(title="Installed detectors (entry-point group mechlab.detectors)")
    table.add_column("name", no_wrap=True)
    table.add_column("provided by", no_wrap=True)
    table.add_column("what a head of this kind does", overflow="fold")
    for name in registry.names():
        if name in registry.conflicts:
            providers = " and ".join(entry.provider for entry in registry.conflicts[name])
            table.add_row(
                escape(name), escape(providers), "[red]unusable: registered by more than one distribution[/]"
            )
            continue
        entry = registry.entry(name)
        try:
            description = escape(registry.create(name).description)
        except mechlab.DetectorError as error:
            description = f"[red]cannot load: {escape(str(error))}[/]"
        table.add_row(escape(name), escape(entry.provider), description)
    console.print(table)
    return 0


def cmd_train_toy(args: argparse.Namespace, console: Console) -> int:
    from rich.progress import Progress

    given = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "weight_decay")}
    config = mechlab.ToyTrainConfig(
        layout=args.layout, seed=args.seed, **{k: v for k, v in given.items() if v is not None}
    )
    with Progress(console=console) as bar:
        task = bar.add_task(f"Training toy:{config.model} ({config.layout} layout)", total=config.steps)

        def show(step: mechlab.TrainStep) -> None:
            bar.update(task, completed=step.step, description=f"loss {step.loss:.3f}")

        trained = mechlab.train_induction_toy(config, device=args.device, progress=show)
    directory = trained.save(args.out)
    console.print(
        f"Trained {config.steps} steps in {trained.seconds:.1f} s; loss on the repeated part "
        f"{trained.final_loss:.3f}. Saved to {escape(f'{directory}: load it as toy:{directory}')}"
    )
    return 0


HANDLERS: dict[str, Handler] = {"detect": cmd_detect, "detectors": cmd_detectors, "train-toy": cmd_train_toy}


def add_parsers(add: Add, sub: Any) -> None:
    """Add ``detect`` with ``add(name, help)`` and ``detectors``/``train-toy`` (no SOURCE) with ``sub``,
    both from ``mechlab.cli.build_parser``."""
    p = add(
        "detect",
        "Find heads of known kinds (induction, previous-token, …) on repeated random tokens, with "
        "95% intervals, the chance level, and a verdict per head.",
    )
    p.add_argument(
        "--detector",
        action="append",
        metavar="NAME",
        help="a detector to run (repeatable; default: every installed one, see `mechlab detectors`)",
    )
    p.add_argument("--top", type=positive_int, default=10, help="heads shown per detector (default 10)")
    p.add_argument("--samples", type=_sample_count, default=8, help="random sequences (default 8)")
    p.add_argument(
        "--seq-len", type=positive_int, default=None, help="random block length (default min(50, n_ctx/2))"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--html", type=Path, metavar="FILE", help="also write an offline HTML report")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every score as JSON")
    add_executor(p)

    p = sub.add_parser(
        "detectors",
        help="List the installed detectors and the package that provides each.",
        description="List the installed detectors (entry-point group mechlab.detectors) and the "
        "package that provides each.",
    )
    p.set_defaults(handler=cmd_detectors)

    p = sub.add_parser(
        "train-toy",
        help="Train the attention-only 2-layer toy model on repeated random tokens (CPU, ~1 min).",
        description="Train toy:attn-only-2l on repeated random tokens and save a checkpoint that "
        "loads as toy:OUT. The random layout grows a previous-token head and induction heads; the "
        "fixed layout is the positional negative control.",
    )
    p.set_defaults(handler=cmd_train_toy)
    p.add_argument("out", metavar="OUT", type=Path, help="checkpoint directory to write")
    # Defaults are ToyTrainConfig's (read when training starts: building the parser imports no torch).
    p.add_argument("--layout", choices=("random", "fixed"), default="random")
    p.add_argument("--steps", type=positive_int, help="training steps (default: ToyTrainConfig.steps)")
    p.add_argument(
        "--batch-size", type=positive_int, help="sequences per step (default: ToyTrainConfig.batch_size)"
    )
    p.add_argument("--lr", type=float, help="learning rate (default: ToyTrainConfig.lr)")
    p.add_argument(
        "--weight-decay", type=float, help="AdamW weight decay (default: ToyTrainConfig.weight_decay)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
