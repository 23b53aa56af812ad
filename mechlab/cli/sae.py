"""The ``sae`` command group: ``corpus``, ``train`` and ``eval`` (and ``features``, from ``sae_features``).

A thin layer over ``mechlab.build_corpus``, ``mechlab.train_sae`` and ``mechlab.evaluate_sae``:
build the offline corpus, train a sparse autoencoder on a model's activations at one site (with a
live progress bar and resumable checkpoints), and evaluate one on held-out text.
"""

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mechlab
from mechlab.cli.common import load, model_options, non_negative_float, positive_int

EXAMPLES = """\
Examples:
  mechlab sae corpus
  mechlab sae train smollm2 --site resid_post.15 --d-sae 9216 --k 64 --n-tokens 16000000 \\
      --harvest-tokens 1040384 --batch-size 1024 --lr 3e-4 --dead-after-tokens 100000 \\
      --autocast bfloat16 --out saes/smollm2-l15
  mechlab sae eval smollm2 saes/smollm2-l15 --tokens 8192 --json eval.json
  mechlab sae eval gemma3-270m gemma-scope-dir/ --site resid_post.12
"""


def cmd_corpus(args: argparse.Namespace, console: Console) -> int:
    root = mechlab.build_corpus(sources=args.sources, force=args.rebuild)
    manifest = json.loads((root / "manifest.json").read_text())
    table = Table("source", "documents", "characters", "licence", title=f"Corpus at {root}")
    for name, info in manifest["sources"].items():
        count = str(info["documents"]) if info["installed"] else f"not installed ({info['install']})"
        table.add_row(name, count, f"{info['characters']:,}", info["licence"])
    console.print(table)
    if args.model:
        model = load(argparse.Namespace(source=args.model, device="cpu", weights="float32"), console).model
        for split in ("train", "heldout"):
            mechlab.corpus_tokens(model, 2, context=2, split=split)  # tokenizes and caches the split
        console.print("Tokenized with the model's tokenizer (cached).")
    return 0


class _LiveBars:
    """Rich progress bars whose text column shows a state's live ``status`` (training metrics)."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )

    def __enter__(self) -> "_LiveBars":
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def task(self, description: str) -> Any:
        """A ``progress=`` callback drawing one bar."""
        task = self.bar.add_task(description, total=None, status="")

        def update(state: Any) -> None:
            self.bar.update(
                task, completed=state.done, total=state.total, status=getattr(state, "status", "")
            )

        return update


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise mechlab.InputError(
            f"--out {out} exists and is not a directory; choose a directory for the SAE."
        )
    try:
        config = mechlab.TrainConfig(
            architecture=args.architecture,
            d_sae=args.d_sae,
            k=args.k if args.architecture == "topk" else None,
            n_tokens=args.n_tokens,
            batch_size=args.batch_size,
            lr=args.lr,
            l1_coefficient=args.l1,
            l0_coefficient=args.l0,
            dead_after_tokens=args.dead_after_tokens,
            context=args.context,
            buffer_rows=max(args.buffer_rows, 2 * args.batch_size),
            autocast=args.autocast,
            seed=args.seed,
        )
    except ValueError as error:
        raise mechlab.InputError(str(error)) from error
    loaded = load(args, console)
    work = out.parent / f"{out.name}.work"
    harvest_dir = (
        Path(args.harvest_dir) if args.harvest_dir else (work / "harvest" if args.harvest_tokens else None)
    )
    with _LiveBars(console) as bars:
        harvest = bars.task("Capturing activations") if harvest_dir is not None else None
        sae = mechlab.train_sae(
            loaded.model,
            args.site,
            config,
            site_out=args.site_out,
            out_dir=out,
            checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else work / "checkpoint",
            harvest_dir=harvest_dir,
            harvest_tokens=args.harvest_tokens,
            model_name=args.source,
            progress=bars.task("Training"),
            harvest_progress=harvest,
        )
    console.print(f"Wrote {escape(str(out))} ({escape(repr(sae.cfg))})")
    console.print(f"Checkpoints and captured activations: {escape(str(work))} (delete when done)")
    return 0


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    sae = mechlab.load_sae(args.sae, site=args.site)
    model = load(args, console).model
    with _LiveBars(console) as bars:
        result = mechlab.evaluate_sae(
            model,
            sae.to(args.device),
            n_tokens=args.tokens,
            batch_size=args.batch_size,
            progress=bars.task("Evaluating"),
        )
    console.print(escape(result.summary()))
    if args.json:
        mechlab.atomic_write(Path(args.json), json.dumps(result.to_dict(), indent=2) + "\n")
        console.print(f"Wrote {escape(args.json)}")
    return 0


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="model source, e.g. smollm2 (see `mechlab --help`)")
    model_options(p)
    p.add_argument("--force", action="store_true", help="replace output files even if read-only")


def add_parsers(sub: Any) -> None:
    """Add the ``sae`` group, its ``corpus``, ``train`` and ``eval`` commands, and ``features`` when
    ``mechlab.cli.sae_features`` is there, to the top-level sub-parsers ``sub``."""
    text = "Sparse autoencoders on your model: build the corpus, train, evaluate, feature pages."
    group = sub.add_parser(
        "sae",
        help=text,
        description=text,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="sae_command", required=True, metavar="SAE_COMMAND")

    p = commands.add_parser("corpus", help="Build the offline text corpus from the installed sources.")
    p.add_argument("--sources", nargs="+", metavar="NAME", help="corpus sources (default: all installed)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if the corpus is cached")
    p.add_argument("--model", metavar="SOURCE", help="also tokenize it with this model's tokenizer")
    p.set_defaults(handler=cmd_corpus)

    p = commands.add_parser("train", help="Train an SAE on a model's activations at one site.")
    _source(p)
    p.add_argument("--site", required=True, help="the site it reads, e.g. resid_post.15")
    p.add_argument("--site-out", help="train a transcoder predicting this site instead, e.g. mlp_out.15")
    p.add_argument("--out", required=True, metavar="DIR", help="where the SAE is written (SAELens layout)")
    p.add_argument("--architecture", choices=["topk", "jumprelu", "relu"], default="topk")
    p.add_argument("--d-sae", type=positive_int, default=4608, help="latents (default 4608)")
    p.add_argument("--k", type=positive_int, default=32, help="TopK's latents per token (default 32)")
    p.add_argument("--n-tokens", type=positive_int, default=2_000_000, help="training tokens (default 2M)")
    p.add_argument("--batch-size", type=positive_int, default=4096, help="tokens per step (default 4096)")
    p.add_argument("--lr", type=non_negative_float, default=4e-4, help="peak learning rate (default 4e-4)")
    p.add_argument("--l1", type=non_negative_float, default=1.0, help="ReLU's L1 coefficient (default 1)")
    p.add_argument("--l0", type=non_negative_float, default=1.0, help="JumpReLU's L0 coefficient (default 1)")
    p.add_argument(
        "--dead-after-tokens",
        type=positive_int,
        default=1_000_000,
        help="a latent silent for this many tokens is dead and trained by AuxK (default 1M)",
    )
    p.add_argument("--context", type=positive_int, default=128, help="tokens per corpus window (default 128)")
    p.add_argument(
        "--buffer-rows", type=positive_int, default=1 << 15, help="shuffling buffer rows (default 32768)"
    )
    p.add_argument(
        "--harvest-tokens",
        type=positive_int,
        help="capture this many tokens' activations to disk first and train on them for several epochs "
        "(default: stream activations as training goes)",
    )
    p.add_argument(
        "--autocast",
        choices=["bfloat16", "float16"],
        help="run the model under torch.autocast to this dtype while capturing (bfloat16: several "
        "times faster on AMX CPUs and GPUs)",
    )
    p.add_argument(
        "--harvest-dir", metavar="DIR", help="where captured activations go (default OUT.work/harvest)"
    )
    p.add_argument(
        "--checkpoint-dir", metavar="DIR", help="checkpoints; a run resumes from one (default OUT.work)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser(
        "eval", help="Evaluate an SAE on held-out text: FVE, L0, dead latents, loss recovered."
    )
    _source(p)
    p.add_argument("sae", metavar="SAE", help="SAE directory (mechlab, SAELens or Gemma Scope layout)")
    p.add_argument("--site", help="the site it reads, when its directory does not say (Gemma Scope)")
    p.add_argument("--tokens", type=positive_int, default=8192, help="held-out tokens (default 8192)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(handler=cmd_eval)

    try:
        features = importlib.import_module("mechlab.cli.sae_features")
    except ModuleNotFoundError as error:
        if error.name != "mechlab.cli.sae_features":
            raise
    else:
        features.add_parser(commands)


HANDLERS: dict[str, Any] = {}
