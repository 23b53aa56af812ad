"""``mechlab patch`` and ``capture``: activation patching and attribution patching, and streaming
activations to shards."""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mechlab
from mechlab.cli.common import Add, Handler, add_executor, executor_from, load, outputs, positive_int


def _sites_arg(values: Sequence[str], per_position: bool) -> Any:
    """One kind → a sweep of it; otherwise a list of sites (``z.23.3``, ``resid_pre.10@-1``)."""
    if len(values) == 1 and "." not in values[0] and "@" not in values[0]:
        return mechlab.Sweep(values[0], per_position=per_position)
    if per_position:
        raise mechlab.InputError(
            "--per-position sweeps one kind: pass --sites KIND (e.g. --sites resid_pre)."
        )
    return [mechlab.Site.parse(v) for v in values]


def cmd_patch(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "plot")
    with executor_from(args) as executor:
        loaded = load(args, console)
        model = loaded.model
        metric = mechlab.LogitDiff.from_text(model, args.answer, args.wrong)
        sites = _sites_arg(args.sites, args.per_position)
        if args.method == "attribution":
            result = mechlab.attribution_patch(
                model, args.clean, args.corrupted, sites, metric, direction=args.direction, executor=executor
            )
        else:
            with mechlab.RichProgress("Patching", transient=True, console=console) as bar:
                result = mechlab.patch(
                    model,
                    args.clean,
                    args.corrupted,
                    sites,
                    metric,
                    direction=args.direction,
                    progress=bar,
                    executor=executor,
                )
        if args.json:
            console.print_json(json.dumps(result.to_dict()))
            return 0
        console.print(escape(result.summary()))
        table = Table(title=f"Top {args.top} by |effect| (1 = carries the whole difference)")
        for column in ("site", "patched metric", "effect"):
            table.add_column(column, justify="left" if column == "site" else "right")
        for entry in result.top(args.top):
            table.add_row(escape(entry.label), f"{entry.value:.4f}", f"{entry.effect:+.3f}")
        console.print(table)
        if args.plot:
            result.plot().savefig(args.plot, dpi=110)
            console.print(f"Wrote {escape(str(args.plot))}")
        return 0


def cmd_capture(args: argparse.Namespace, console: Console) -> int:
    with executor_from(args) as executor:
        loaded = load(args, console)
        path = Path(args.prompts)
        if not path.is_file():
            raise mechlab.InputError(f"{path} does not exist; expected a text file with one prompt per line.")
        with path.open(encoding="utf-8") as lines, mechlab.RichProgress("Capturing") as progress:
            prompts = (line.rstrip("\n") for line in lines if line.strip())
            dataset = mechlab.capture_dataset(
                loaded.model,
                prompts,
                args.sites,
                args.out,
                batch_size=args.batch_size,
                progress=progress,
                verify_shards=args.verify_shards,
                executor=executor,
            )
        shards = len(dataset.manifest["shards"])
        where = f"sites {', '.join(dataset.sites)} → {args.out}"
        console.print(f"{len(dataset)} prompts, {escape(where)} ({shards} shards)")
        return 0


HANDLERS: dict[str, Handler] = {"patch": cmd_patch, "capture": cmd_capture}


def add_parsers(add: Add) -> None:
    """Add ``patch`` and ``capture``."""
    p = add(
        "patch",
        "Activation patching: which sites carry the difference between a clean and a corrupted prompt "
        "(metric: logit(--answer) - logit(--wrong) at the last position).",
    )
    p.add_argument("--clean", required=True, help="prompt that shows the behaviour")
    p.add_argument("--corrupted", required=True, help="minimally different prompt, same token length")
    p.add_argument("--answer", required=True, help="the clean answer token, e.g. ' Mary'")
    p.add_argument("--wrong", required=True, help="the competing token, e.g. ' John'")
    p.add_argument(
        "--sites",
        nargs="+",
        default=["z"],
        help="a kind to sweep (z, q, k, v, pattern, resid_pre, resid_mid, resid_post, attn_out, mlp_out, "
        "mlp_post, embed) or site strings such as z.23.3 resid_pre.10@-1 (default: z = every head)",
    )
    p.add_argument("--per-position", action="store_true", help="sweep every position separately")
    p.add_argument("--direction", choices=["denoise", "noise"], default="denoise")
    p.add_argument(
        "--method",
        choices=["activation", "attribution"],
        default="activation",
        help="activation patching, or its gradient estimate (AtP: 2 forwards + 1 backward)",
    )
    p.add_argument("--top", type=positive_int, default=10, help="rows in the table")
    p.add_argument("--plot", metavar="PNG", help="save the heatmap")
    p.add_argument("--json", action="store_true", help="print every cell as JSON instead")
    add_executor(p)

    p = add("capture", "Stream activations of many prompts to safetensors shards (resumable).")
    p.add_argument("prompts", metavar="PROMPTS", help="text file, one prompt per line")
    p.add_argument(
        "--sites", nargs="+", required=True, help="sites or kinds, e.g. resid_post.20 z.23.3 mlp_out"
    )
    p.add_argument("--out", required=True, help="output directory (an interrupted run there resumes)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument(
        "--verify-shards",
        action="store_true",
        help="when resuming, hash every shard already written (default: those whose size or time changed)",
    )
    add_executor(p)
