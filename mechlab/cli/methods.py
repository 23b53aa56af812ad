"""The explanation sub-commands: ``attribute``, ``lens``, ``probe`` and ``attention``.

Registered into ``mechlab.cli`` by ``add_explain_parsers``; each handler is a thin layer over
``mechlab.explain``.
"""

import argparse
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mechlab
from mechlab.cli.common import (
    Add,
    Handler,
    add_executor,
    executor_from,
    int_list,
    load,
    outputs,
    positive_int,
    progress,
)


def _bar(value: float, bound: float, width: int = 24) -> str:
    filled = round(width * min(abs(value) / bound, 1.0)) if bound > 0 else 0
    return f"[red]{'█' * filled}[/]" if value >= 0 else f"[blue]{'█' * filled}[/]"


def _prediction(console: Console, model: Any, tokens: Any) -> None:
    import torch

    with torch.no_grad():
        top = ", ".join(
            f"{escape(repr(a.text))} {a.prob:.2f}" for a in mechlab.next_token_alternatives(model, tokens, 5)
        )
    console.print(f"The model's next-token prediction: {top}")


def cmd_attribute(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "html")

    model = load(args, console).model
    tokens = mechlab.as_tokens(model, args.prompt)
    target = mechlab.make_target(model, args.target, contrast=args.contrast, kind=args.metric, pos=args.pos)
    _prediction(console, model, tokens)
    baseline: Any = int(args.baseline) if args.baseline.isdigit() else args.baseline
    with progress(console, f"Attributing {target.label}"):
        if args.method == "ig":
            result = mechlab.integrated_gradients(model, tokens, target, baseline=baseline, steps=args.steps)
        elif args.method == "gxi":
            result = mechlab.gradient_x_input(model, tokens, target, baseline=baseline)
        else:
            result = mechlab.occlusion(
                model, tokens, target, replacement=baseline if baseline not in ("zeros", "mean") else "."
            )
    bound = float(result.scores.abs().max())
    table = Table(title=f"{escape(result.summary())}", title_justify="left")
    for name, justify in (("pos", "right"), ("token", "left"), ("attribution", "right"), ("", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for pos, (token, score) in enumerate(zip(result.str_tokens, result.scores.tolist(), strict=True)):
        table.add_row(str(pos), escape(repr(token)), f"{score:+.4f}", _bar(score, bound))
    console.print(table)
    ranked = ", ".join(f"{escape(repr(t))} {s:+.3f}" for _, t, s in result.top(5))
    console.print(f"Most attributed tokens: {ranked}")
    words = sorted(result.words(), key=lambda pair: -pair[1])[:5]
    console.print(
        "Most attributed words: " + ", ".join(f"{escape(repr(w.strip()))} {s:+.3f}" for w, s in words)
    )
    if result.completeness_error is not None:
        console.print(
            f"Completeness error: {100 * result.completeness_error:.2f}% "
            f"(sum of attributions {float(result.scores.sum()):+.4f} vs F(x) − F(baseline) "
            f"{result.value - (result.baseline_value or 0.0):+.4f})"
        )
    if args.html:
        console.print(f"Wrote {escape(str(result.save_html(args.html)))}")
    return 0


def cmd_lens(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "html")

    model = load(args, console).model
    tokens = mechlab.as_tokens(model, args.prompt)
    targets = tuple(args.target) if args.target else None
    with progress(console, "Reading the residual stream"):
        lens = mechlab.logit_lens(model, tokens, pos=args.pos, targets=targets)
        dla = mechlab.direct_logit_attribution(
            model, tokens, lens.targets[0], contrast=args.contrast, pos=args.pos
        )
    table = Table(title=f"Logit lens at position {lens.pos} ({escape(repr(lens.str_tokens[lens.pos]))})")
    table.add_column("layer")
    table.add_column("top 3 (p)")
    for name in lens.target_names:
        table.add_column(f"log p {escape(repr(name))}", justify="right")
        table.add_column("rank", justify="right")
    lps = lens.target_log_probs()
    ranks = [lens.ranks(t) for t in lens.targets]
    for row, label in enumerate(lens.labels):
        top = ", ".join(f"{escape(repr(t))} {p:.2f}" for t, p in lens.top_tokens[row][:3])
        cells = [
            c
            for i in range(len(lens.targets))
            for c in (f"{float(lps[row, i]):.2f}", str(int(ranks[i][row])))
        ]
        table.add_row(label, top, *cells)
    console.print(table)
    console.print(escape(dla.summary()))
    heads = ", ".join(f"L{layer}H{head} {value:+.2f}" for layer, head, value in dla.top_heads(8))
    console.print(f"Heads with the largest direct effect: {heads}")
    layers = ", ".join(f"L{i} {v:+.2f}" for i, v in enumerate(dla.by_layer.tolist()) if abs(v) >= 0.5)
    console.print(f"Layers contributing |≥ 0.5|: {layers or '-'}")
    if args.html:
        page = lens.page(f"Logit lens and DLA: {args.prompt}")
        console.print(f"Wrote {escape(str(dla.add_to(page).save(args.html)))}")
    return 0


def cmd_probe(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "html")

    try:
        config = mechlab.ProbeConfig(
            test_fraction=args.test_fraction, weight_decay=args.weight_decay, seed=args.seed
        )
    except ValueError as error:
        raise mechlab.InputError(str(error)) from error
    dataset = mechlab.load_probe_dataset(args.data)
    with executor_from(args) as executor:
        model = load(args, console).model
        layers = args.layers or None
        with progress(console, f"Caching activations and fitting probes ({dataset.summary()})"):
            result = mechlab.train_probes(
                model, dataset, args.site, layers, position=args.position, config=config, executor=executor
            )
        table = Table(title=escape(f"{dataset.summary()}; {args.site} at the {result.position} position"))
        for name in ("layer", "accuracy", "control", "selectivity"):
            table.add_column(name, justify="right")
        best = result.best_layer
        for layer, acc, ctl in zip(
            result.layers, result.accuracy.tolist(), result.control_accuracy.tolist(), strict=True
        ):
            style = "bold green" if layer == best else ""
            table.add_row(str(layer), f"{acc:.3f}", f"{ctl:.3f}", f"{acc - ctl:+.3f}", style=style)
        console.print(table)
        console.print(
            f"Majority-class accuracy {result.majority:.3f}; best selectivity at layer {best} "
            f"({float(result.selectivity.max()):+.3f}); {result.n_train} training / {result.n_test} held-out "
            "texts."
        )
        if args.html:
            console.print(f"Wrote {escape(str(result.page().save(args.html)))}")
        return 0


def cmd_attention(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "html", "png")

    model = load(args, console).model
    view = mechlab.attention_view(model, args.prompt, layers=args.layers or None, heads=args.heads or None)
    console.print(f"{len(view.heads)} heads on {len(view.str_tokens)} tokens")
    if args.png:
        console.print(f"Wrote {escape(str(view.save_png(args.png)))}")
    console.print(f"Wrote {escape(str(view.save(args.html)))}")
    return 0


HANDLERS: dict[str, Handler] = {
    "attribute": cmd_attribute,
    "lens": cmd_lens,
    "probe": cmd_probe,
    "attention": cmd_attention,
}


def add_parsers(add: Add) -> None:
    """Add the explanation sub-commands with ``add(name, help)`` from ``mechlab.cli.build_parser``."""
    p = add(
        "attribute", "Which prompt tokens made the model predict TOKEN? (Integrated Gradients by default)"
    )
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--target", required=True, help="the next token to explain, e.g. ' Paris' (one token)")
    p.add_argument("--contrast", help="explain logit(target) − logit(contrast) instead, e.g. ' he'")
    p.add_argument("--method", choices=["ig", "gxi", "occlusion"], default="ig")
    p.add_argument("--metric", choices=["logprob", "logit", "prob"], default="logprob")
    p.add_argument(
        "--baseline",
        default=".",
        help="IG/gxi baseline: a token ('.' default), a token id, pad, mean or zeros",
    )
    p.add_argument("--steps", type=positive_int, default=128, help="gradient evaluations IG may spend")
    p.add_argument("--pos", type=int, default=-1, help="output position to explain (default: last)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")

    p = add("lens", "Logit lens over the layers and direct logit attribution per layer and head.")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--target", action="append", help="token(s) to track (default: the top prediction)")
    p.add_argument("--contrast", help="DLA of logit(target) − logit(contrast)")
    p.add_argument("--pos", type=int, default=-1)
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")

    p = add("probe", "Train a linear probe per layer on labelled texts, with a control task.")
    p.add_argument("data", metavar="DATA", help="CSV/JSONL with text,label[,word], or sentiment / number")
    p.add_argument("--site", default="resid_post", help="activation kind (default resid_post)")
    p.add_argument("--layers", type=int_list, help="comma-separated layers (default: all)")
    p.add_argument("--position", choices=["last", "mean", "word"], default="last", help="default: last")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--weight-decay", type=float, default=0.1, help="L2 penalty (standardised features)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page")
    add_executor(p)

    p = add("attention", "Write an offline HTML page (and PNG) of attention patterns.")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--layers", type=int_list, help="comma-separated layers (default: all)")
    p.add_argument("--heads", type=int_list, help="comma-separated heads in each layer (default: all)")
    p.add_argument("--html", metavar="FILE", required=True)
    p.add_argument("--png", metavar="FILE", help="also a static heatmap grid")
