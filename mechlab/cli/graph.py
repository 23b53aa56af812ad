"""The ``graph`` command: an attribution graph of a prompt through the operator's transcoders.

``mechlab graph SOURCE PROMPT --transcoders DIR --out graph.html`` loads the model and one
transcoder per layer from ``DIR`` (``layer_N/`` directories or files, mechlab / circuit-tracer /
Gemma Scope 2 layouts), computes the graph (``mechlab.attribute_graph``), prunes it, ablates the
top features in the real model to measure the intervention agreement, prints the replacement and
completeness scores and the agreement, names the features (layer 0's by the vocabulary tokens that
excite them alone, the others by their top contexts in the corpus; all by their logit effects),
prints the strongest paths through features from the prompt's tokens to the target
(``mechlab.feature_paths``), and writes the offline interactive page (and ``--json``).
"""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mechlab
from mechlab.cli.common import load, non_negative_float, positive_int

EXAMPLES = """\
Examples:
  mechlab graph smollm2 "The Eiffel Tower is located in the city of" --transcoders DIR --out graph.html
  mechlab graph smollm2 "The nurse was tired because" --transcoders DIR --target " she" \\
      --contrast " he" --out g.html --json g.json
  Train the transcoders with: .venv/bin/python bench/graph.py --train transcoders/smollm2
"""


def _unit(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text}")
    return value


def cmd_graph(args: argparse.Namespace, console: Console) -> int:
    out = Path(args.out)
    json_path = Path(args.json) if args.json else None
    for path in (out, json_path):
        if path is not None and path.exists() and path.is_dir():
            raise mechlab.InputError(f"{path} is a directory; pass a file path for the output.")
    transcoders = mechlab.load_transcoders(args.transcoders, device=args.device)
    loaded = load(args, console)
    model = loaded.model
    target: Any = None
    if args.target is not None:
        target = (args.target, args.contrast) if args.contrast is not None else args.target
    elif args.contrast is not None:
        raise mechlab.InputError("--contrast needs --target (the logit difference target − contrast).")
    console.print(f"Transcoders for layers {', '.join(str(layer) for layer in transcoders)}")
    with console.status("Computing the attribution graph") as status:

        def report(state: Any) -> None:
            status.update(f"Computing the attribution graph: pass {state.done}/{state.total}")

        graph = mechlab.attribute_graph(
            model,
            transcoders,
            args.prompt,
            target=target,
            max_feature_nodes=args.max_features,
            batch_size=args.batch_size,
            progress=report,
        )
    pruned = mechlab.prune_graph(
        graph, node_threshold=args.node_threshold, edge_threshold=args.edge_threshold
    )
    replacement, completeness = mechlab.graph_scores(graph)
    with console.status("Ablating the top features in the real model"):
        check = mechlab.verify_graph(model, transcoders, graph, top=args.verify_top)
    table = Table("figure", "value", title=f"Attribution graph of {escape(args.prompt)!r}")
    table.add_row("replacement score", f"{replacement:.3f}")
    table.add_row("completeness score", f"{completeness:.3f}")
    table.add_row(f"intervention agreement r (top {len(check.nodes)} features)", f"{check.r:.3f}")
    table.add_row(
        "features kept / computed / active",
        f"{int(pruned.node_mask[: graph.n_features].sum())} / {graph.n_features} / {graph.n_active}",
    )
    table.add_row("edges kept", str(int(pruned.edge_mask.sum())))
    table.add_row("logit nodes", escape(", ".join(repr(label) for label in graph.logit_labels)))
    console.print(table)
    effects = mechlab.logit_effects(model, transcoders, graph)
    reports = None
    if args.corpus_tokens:
        with console.status("Reading feature contexts from the corpus"):
            tokens = mechlab.corpus_tokens(model, args.corpus_tokens, context=64, split="heldout")
            reports = mechlab.feature_reports(model, transcoders, graph, pruned, tokens)
    with console.status("Running the vocabulary through layer 0 for its features' names"):
        inputs = mechlab.vocabulary_inputs(model, transcoders, graph, pruned)
    names = mechlab.feature_names(graph, effects, reports, inputs=inputs)
    paths = mechlab.feature_paths(graph, pruned)
    console.print(
        f"Strongest paths through features to {graph.logit_labels[0]!r} "
        "(share: the product of each edge's share of its target's input):"
    )
    for path in paths[: args.paths]:
        console.print("  " + escape(mechlab.describe_path(graph, path, names)), highlight=False)
    if not paths:
        console.print("  none: every path from the prompt's tokens runs through an error node")
    page = mechlab.graph_page(
        graph, pruned=pruned, verification=check, effects=effects, reports=reports, inputs=inputs
    )
    console.print(f"Wrote {page.save(out)}")
    if json_path is not None:
        console.print(f"Wrote {mechlab.save_graph_json(graph, json_path, pruned, names=names)}")
    return 0


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("graph", "Attribution graph of a prompt through transcoder features, as an offline HTML page.")
    p.epilog = EXAMPLES
    p.add_argument("prompt", metavar="PROMPT", help="the prompt whose next token is traced")
    p.add_argument("--transcoders", required=True, metavar="DIR", help="one transcoder per layer (layer_N/)")
    p.add_argument("--out", required=True, metavar="FILE", help="the HTML page to write")
    p.add_argument("--json", metavar="FILE", help="also write the graph in circuit-tracer's JSON layout")
    p.add_argument("--target", help="trace this next token (default: the top logits)")
    p.add_argument("--contrast", help="trace the logit difference TARGET − CONTRAST")
    p.add_argument(
        "--max-features", type=positive_int, default=1024, help="feature rows computed (default 1024)"
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per backward pass (default 32)")
    p.add_argument("--node-threshold", type=_unit, default=0.8, help="cumulative node influence kept (0.8)")
    p.add_argument("--edge-threshold", type=_unit, default=0.98, help="cumulative edge influence kept (0.98)")
    p.add_argument("--verify-top", type=positive_int, default=20, help="features ablated to verify (20)")
    p.add_argument(
        "--corpus-tokens",
        type=int,
        default=4096,
        help="name features after layer 0 by their top contexts in this many corpus tokens (default "
        "4096; 0: none); layer 0's are named by the vocabulary tokens that excite them alone",
    )
    p.add_argument("--paths", type=positive_int, default=5, help="paths through features printed (5)")


HANDLERS: dict[str, Any] = {"graph": cmd_graph}
