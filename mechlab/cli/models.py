"""``mechlab info``, ``generate``, ``verify`` and ``compare``: what the model is, what it says, whether it
is faithful, and what a quantization changed."""

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mechlab
from mechlab.cli.common import Add, Handler, load, non_negative_float, outputs, positive_int, progress


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


def cmd_info(args: argparse.Namespace, console: Console) -> int:
    if args.plan:
        plan = mechlab.plan_memory(args.source, device=args.device, prompt_len=args.prompt_len)
        if args.json:
            console.print_json(json.dumps(plan.to_dict()))
            return 0
        table = Table(
            "mode",
            "weights",
            "load",
            "forward",
            "IG",
            "AtP",
            "",
            title=f"Peak memory (GB) at {plan.prompt_len} tokens; {plan.available / 1024**3:.1f} GB free",
        )
        for row in plan.rows():
            table.add_row(*row, style=None if row[-1] == "fits" else "red")
        console.print(table)
        console.print(escape(plan.summary()))
        return 0
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


def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "html")
    loaded = load(args, console)
    with progress(console, f"Comparing with {args.reference}"):
        report = mechlab.verify(
            loaded=loaded,
            max_new_tokens=args.max_new_tokens,
            tolerance=args.tolerance,
            reference=args.reference,
            layers=args.layers,
        )
    if args.json:
        console.print_json(json.dumps(report.to_dict()))
    for pair in report.generations:
        mark = "[green]=[/]" if pair.agree else "[red]≠[/]"
        texts = f"{pair.prompt!r} → hooked {pair.hooked!r} / reference {pair.reference!r}"
        console.print(f"{mark} {escape(texts)}")
    if report.layers:
        print_layers(console, report)
    if args.html:
        console.print(f"Wrote {escape(str(report.page().save(args.html)))}")
    console.print(("[bold green]" if report.passed else "[bold red]") + escape(report.summary()))
    return 0 if report.passed else 1


def print_layers(console: Console, report: "mechlab.VerifyReport") -> None:
    """The per-layer relative errors against llama.cpp, diverging layers in red."""
    kinds = [
        k for k in report.layers[0].errors if any(row.errors.get(k) is not None for row in report.layers)
    ]
    table = Table("layer", *kinds, title="relative error ‖ours − llama.cpp‖ / ‖llama.cpp‖")
    for row in report.layers:
        style = "red" if row.diverges else None
        cells = ["–" if row.errors.get(k) is None else f"{row.errors[k]:.2%}" for k in kinds]
        table.add_row(str(row.layer), *cells, style=style)
    console.print(table)


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "html", "json")
    if (args.other is None) == (args.requantize is None):
        raise mechlab.InputError(
            "compare needs a second file of the same model: pass it (mechlab compare A.gguf B.gguf), or "
            "--requantize TYPE to make it from the first with llama.cpp's quantizer (e.g. Q2_K)."
        )
    first = load(args, console)
    if args.requantize is not None:
        if first.info.kind != "gguf" or first.info.path is None:
            raise mechlab.InputError(
                f"--requantize needs a GGUF file; {args.source!r} is a {first.info.kind} source."
            )
        with progress(console, f"Quantizing to {args.requantize} with llama.cpp"):
            other = str(mechlab.requantized(Path(first.info.path), args.requantize))
    else:
        other = args.other
    second = load(argparse.Namespace(**{**vars(args), "source": other}), console)
    detectors = [] if args.detectors == "none" else args.detectors.split(",")
    with progress(console, "Comparing outputs, layers, heads and detector verdicts"):
        result = mechlab.compare_models(first, second, detectors=detectors, n_samples=args.samples)
    table = Table("layer", *result.layers, title="relative error ‖b − a‖ / ‖a‖ (mean over positions)")
    for layer in range(len(result.layers["resid_post"])):
        table.add_row(str(layer), *(f"{values[layer]:.2%}" for values in result.layers.values()))
    console.print(table)
    if result.changes:
        changes = Table(
            "detector",
            "head",
            "verdict in a",
            "verdict in b",
            "score a",
            "score b",
            title="verdicts that change",
        )
        for c in result.changes:
            changes.add_row(
                c.detector, c.label, c.verdict_a, c.verdict_b, f"{c.score_a:.2f}", f"{c.score_b:.2f}"
            )
        console.print(changes)
    console.print(escape(result.summary()))
    if args.html:
        console.print(f"Wrote {escape(str(result.page().save(args.html)))}")
    if args.json:
        console.print(
            f"Wrote {escape(str(mechlab.atomic_write(Path(args.json), json.dumps(result.to_dict()))))}"
        )
    return 0


HANDLERS: dict[str, Handler] = {
    "info": cmd_info,
    "generate": cmd_generate,
    "verify": cmd_verify,
    "compare": cmd_compare,
}


def add_parsers(add: Add) -> None:
    """Add ``info``, ``generate``, ``verify`` and ``compare``."""
    p = add("info", "Show what a model is: architecture, quantization, shape, hash, cache location.")
    p.add_argument("--json", action="store_true", help="print the ModelInfo record (or the plan) as JSON")
    p.add_argument(
        "--plan",
        action="store_true",
        help="instead, estimate from the GGUF header (nothing loaded) the peak memory of loading, a forward "
        "pass, IG and AtP in each mode, against the memory available",
    )
    p.add_argument("--prompt-len", type=positive_int, default=32, help="prompt length for --plan (tokens)")

    p = add("generate", "Generate a completion and show each token's probability and alternatives.")
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    p.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template")
    p.add_argument("--max-new-tokens", type=positive_int, default=20)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (temperature > 0)")
    p.add_argument("--top-k", type=positive_int, default=5, help="alternatives shown per token")

    p = add(
        "verify",
        "Check the hooked model against an independent transformers reference "
        "(exit code 1 if they disagree beyond tolerance).",
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=12, help="greedy tokens compared per prompt"
    )
    p.add_argument(
        "--reference",
        choices=["transformers", "llamacpp"],
        default="transformers",
        help="transformers loading the same file (default), or llama.cpp itself (GGUF files; "
        "needs `make install-llamacpp`)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max |Δ log-prob| (transformers; float32: 1e-4) or max mean KL in nats (llamacpp: 0.01)",
    )
    p.add_argument(
        "--layers",
        action="store_true",
        help="with --reference llamacpp: compare llama.cpp's intermediate tensors with the hook points, "
        "layer by layer (where a disagreement starts)",
    )
    p.add_argument("--html", metavar="FILE", help="also write the comparison as a self-contained HTML page")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")

    p = add(
        "compare",
        "Quantization forensics: SOURCE and a second file of the same model compared (outputs, each "
        "layer, each head's attention, detector verdicts).",
    )
    p.add_argument("other", metavar="OTHER", nargs="?", help="the second file (e.g. another quantization)")
    p.add_argument(
        "--requantize",
        metavar="TYPE",
        help="instead of OTHER, re-quantize SOURCE with llama.cpp (Q8_0, Q4_K_M, Q2_K, …; cached)",
    )
    p.add_argument(
        "--detectors",
        default=",".join(("induction", "previous-token")),
        help="comma-separated detectors whose verdicts are compared, or 'none'",
    )
    p.add_argument("--samples", type=positive_int, default=8, help="random sequences per detector")
    p.add_argument("--html", metavar="FILE", help="write tables and plots as a self-contained page")
    p.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
