"""The ``explain`` sub-command: one prompt in, one self-contained offline HTML report out; or a
prompt file in (``--prompts``), a directory with a report per prompt and an index page out.

A thin layer over ``mechlab.explain``; ``add_parsers`` adds it to ``mechlab.cli.build_parser``.
"""

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import mechlab
from mechlab.cli.common import (
    Add,
    Handler,
    add_executor,
    executor_from,
    load,
    non_negative_float,
    non_negative_int,
    outputs,
    positive_int,
)


def settings_from(args: argparse.Namespace) -> "mechlab.ExplainSettings":
    chosen = ",".join(mechlab.ExplainSettings.detectors) if args.detectors is None else args.detectors
    detectors = () if args.no_detectors else tuple(d.strip() for d in chosen.split(",") if d.strip())
    registry = mechlab.DetectorRegistry.from_entry_points()
    for name in detectors:  # an unknown or clashing name is an error before the model loads
        registry.entry(name)
    try:
        return mechlab.ExplainSettings(
            chat=args.chat,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            step=args.step,
            target=args.target,
            contrast=args.contrast,
            top_heads=args.top_heads,
            ig_steps=args.ig_steps,
            detectors=detectors,
            verify=args.verify,
            top_latents=args.top_latents,
        )
    except ValueError as error:
        raise mechlab.InputError(str(error)) from error


def cmd_explain(args: argparse.Namespace, console: Console) -> int:
    if (args.prompt is None) == (args.prompts is None):
        raise mechlab.InputError(
            "Pass either PROMPT (one report) or --prompts FILE (a JSON-lines file: a report per prompt "
            "and an index page in the --out directory), not both and not neither."
        )
    if args.prompts is not None:
        return explain_prompts(args, console)
    if args.executor != "in-process" or args.address is not None:
        raise mechlab.InputError("--executor and --address apply to --prompts (one task per prompt).")
    # Checks that need no model run before loading it; the prompt's length and --target/--contrast
    # need the tokenizer and are checked by explain() before it generates.
    mechlab.check_prompt(args.prompt)
    args.out = args.out or "report.html"
    checked = outputs(args, "out", "json")
    out, summary_path = checked["--out"], checked.get("--json")
    settings = settings_from(args)
    saes = {
        Path(directory).resolve().name: mechlab.load_sae(directory, device=args.device)
        for directory in args.sae
    }
    if len(saes) != len(args.sae):
        raise mechlab.InputError(
            f"Two --sae directories share a name ({', '.join(args.sae)}); the report names each SAE after "
            "its directory, so give them distinct names."
        )
    loaded = load(args, console)
    corpus = None
    if saes and args.sae_tokens:
        corpus = mechlab.corpus_tokens(loaded.model, args.sae_tokens, context=args.sae_context, split="train")
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("explaining", total=None)

        def report(state: Any) -> None:  # mechlab.report.settings.ExplainProgress
            bar.update(task, completed=state.done, total=state.total, description=state.stage)

        explanation = mechlab.explain(
            loaded,
            args.prompt,
            settings=settings,
            progress=report,
            saes=saes,
            sae_corpus=corpus,
            sae_corpus_name="the offline corpus (train split)",
        )
        if args.fix:
            bar.update(task, description="fix")
            explanation = explanation.with_fix(loaded)
    path = explanation.save(out)
    summary = explanation.to_dict()
    if summary_path is not None:
        mechlab.atomic_write(summary_path, json.dumps(summary, indent=2, default=str))
    chosen, contrast = explanation.target_names
    completion = explanation.completion
    console.print(f"[dim]{escape(completion.model_text)}[/][bold green]{escape(completion.text)}[/]")
    console.print(
        f"Explained {escape(chosen)} (p={explanation.chosen_prob:.3f}) vs {escape(contrast)} "
        f"(p={explanation.contrast_prob:.3f}): logit difference {explanation.dla.value:+.3f}"
    )
    step = completion.steps[settings.step]
    console.print(
        f"Alternatives at token {settings.step}: "
        + ", ".join(f"{escape(repr(a.text))} {a.prob:.3f}" for a in step.alternatives)
    )
    words = sorted(explanation.ig.words(), key=lambda pair: -abs(pair[1]))[:4]
    error = explanation.ig.completeness_error
    console.print(
        "Integrated Gradients: "
        + ", ".join(f"{escape(repr(w))} {s:+.2f}" for w, s in words)
        + ("" if error is None else f" (completeness error {100 * error:.2f}%)")
    )
    heads = ", ".join(f"{h.label} {h.ablation:+.2f}" for h in explanation.heads[:4])
    console.print(f"Heads that matter (drop in logit difference when knocked out): {heads}")
    if explanation.fix is not None:
        console.print(escape(explanation.fix.summary()))
        console.print(f"Write it for llama.cpp and Ollama: {escape(explanation.fix.command)}")
    for found in explanation.saes:
        latents = ", ".join(f"{f.latent} {f.attribution:+.2f}" for f in found.latents[:4])
        console.print(
            f"SAE {escape(found.name)} at {found.site}: {found.n_active} latents active; attribution "
            f"(activation × gradient): {latents}"
        )
    console.print(
        f"Report: [bold]{escape(str(path))}[/] ({explanation.manifest['timings_s']['total']:.0f} s)"
    )
    if summary_path is not None:
        console.print(f"Summary: {escape(str(summary_path))}")
    verification = explanation.verification
    if verification is None:
        return 0
    if verification.passed:
        console.print(f"[bold green]Verification {escape(verification.summary())}[/]")
        return 0
    console.print(
        f"[bold red]Verification {escape(verification.summary())}[/]\n"
        "The report was written, but the hooked model disagrees with its reference beyond tolerance, "
        "so its explanations may not describe the original model: run `mechlab verify "
        f"{escape(args.source)}` for details."
    )
    return 1


def explain_prompts(args: argparse.Namespace, console: Console) -> int:
    """``explain --prompts FILE --out DIR``: a report per prompt, an index page, one task each."""
    if args.json is not None:
        raise mechlab.InputError(
            "--json applies to one prompt; with --prompts each report has its JSON summary."
        )
    tasks = mechlab.read_prompts(args.prompts)
    settings = settings_from(args)
    with executor_from(args) as executor:
        out = args.out or "reports"
        loaded = load(args, console)
        with mechlab.RichProgress(f"Explaining {len(tasks)} prompts", console=console) as bar:
            rows = mechlab.explain_prompts(
                loaded, tasks, out, settings=settings, progress=bar, executor=executor
            )
        failed = [row for row in rows if "error" in row]
        for row in failed:
            console.print(f"[bold red]prompt {row['index']}:[/] {escape(row['error'])}", highlight=False)
        console.print(
            f"{len(rows) - len(failed)} of {len(rows)} prompts explained; "
            f"index: [bold]{escape(out)}/index.html[/]"
        )
        return 1 if failed else 0


HANDLERS: dict[str, Handler] = {"explain": cmd_explain}


def add_parsers(add: Add) -> None:
    """Add ``explain`` with ``add(name, help)`` from ``mechlab.cli.build_parser``."""
    p = add(
        "explain",
        "Generate a completion and write one offline HTML report of why the model said it: "
        "Integrated Gradients, logit lens, direct logit attribution, the heads that matter, their "
        "attention, known circuits, and a reproducibility manifest.",
    )
    p.add_argument("prompt", metavar="PROMPT", nargs="?", help="the text the model continues")
    p.add_argument(
        "--prompts",
        metavar="FILE",
        help='explain every prompt of a JSON-lines file ({"prompt": ..., "target"?: ..., "contrast"?: ...} '
        "per line) instead: a report per prompt and index.html in the --out directory",
    )
    p.add_argument(
        "--out",
        default=None,
        help="the HTML report to write (default report.html); with --prompts, the directory "
        "(default reports)",
    )
    p.add_argument("--json", metavar="FILE", help="also write a JSON summary")
    p.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template")
    p.add_argument("--max-new-tokens", type=positive_int, default=20)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and the detectors' inputs")
    p.add_argument(
        "--step", type=non_negative_int, default=0, help="which generated token to explain (0 = first)"
    )
    p.add_argument(
        "--target", help="explain this token instead of the generated one (one token, e.g. ' she')"
    )
    p.add_argument("--contrast", help="compare against this token instead of the runner-up (e.g. ' he')")
    p.add_argument(
        "--top-heads", type=non_negative_int, default=6, help="heads shown with attention views (default 6)"
    )
    p.add_argument("--ig-steps", type=positive_int, default=128, help="gradient evaluations IG may spend")
    p.add_argument(
        "--detectors",
        help="comma-separated detectors to run (default: those of mechlab.ExplainSettings)",
    )
    p.add_argument("--no-detectors", action="store_true", help="skip the detectors")
    p.add_argument(
        "--sae",
        metavar="DIR",
        action="append",
        default=[],
        help="an SAE directory of this model (repeatable): adds the latents most active at the explained "
        "position, their attribution (activation × gradient) and feature pages",
    )
    p.add_argument(
        "--top-latents",
        type=positive_int,
        default=8,
        help="latents listed per SAE, by activation and by attribution",
    )
    p.add_argument(
        "--sae-tokens",
        type=non_negative_int,
        default=16_384,
        help="offline-corpus tokens read for the latents' feature pages (0: the explained context only)",
    )
    p.add_argument("--sae-context", type=positive_int, default=128, help="tokens per corpus window")
    p.add_argument(
        "--fix",
        action="store_true",
        help="add a section with the explained preference's readout direction mean-ablated: the logit "
        "difference before and after, the KL on neutral text, and the `mechlab bake` command that writes it",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="also check the model against a transformers reference (exit code 1 if they disagree; "
        "the report is still written)",
    )
    add_executor(p)
