"""The fix sub-commands: ``direction``, ``export-control-vector`` and ``bake``.

A thin layer over ``mechlab.directions`` and ``mechlab.fix``: find a direction from contrastive
pairs, write it as a llama.cpp control vector, or project it out of a GGUF file's weights; with
``--verify``, run the written file in llama.cpp and print the figures that say whether it worked.
"""

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mechlab
from mechlab.cli.common import Add, Handler, int_list, load, outputs, progress

PRONOUNS = "pronouns"  # --pairs pronouns[:KIND]: the shipped occupation/pronoun pairs


def _pairs(spec: str) -> Any:
    if spec == PRONOUNS or spec.startswith(f"{PRONOUNS}:"):
        kind = spec.partition(":")[2] or "answer"
        return mechlab.load_pronoun_set().pairs(kind)
    return mechlab.load_pairs(spec)


def _direction(args: argparse.Namespace, model: Any, console: Console) -> Any:
    """The direction from --direction FILE, or found from --pairs at --layer."""
    if args.direction:
        direction = mechlab.load_direction(args.direction)
    elif getattr(args, "readout", None):
        direction = mechlab.directions.from_readout(model, *args.readout)
    else:
        if args.pairs is None or args.layer is None:
            raise mechlab.InputError(
                "Give the direction: --direction FILE (written by `mechlab direction ... --out`), "
                "--pairs FILE --layer L to find it here, or --readout A B (bake only)."
            )
        pairs = _pairs(args.pairs)
        with progress(console, f"Finding the direction at layer {args.layer} ({len(pairs)} pairs)"):
            direction = mechlab.directions.from_pairs(model, pairs, args.layer, method=args.method)
    console.print(escape(direction.summary()))
    return direction


def _gguf(loaded: Any) -> Path:
    if loaded.info.kind != "gguf" or loaded.info.path is None:
        raise mechlab.InputError(
            f"{loaded.info.source} is not a GGUF file; control vectors and baked weights are for "
            "llama.cpp and Ollama, which run GGUF files. Pass the .gguf file (or smollm2)."
        )
    return Path(loaded.info.path)


def cmd_direction(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "out", "html")
    pairs = _pairs(args.pairs)
    model = load(args, console).model
    layers = None if args.scan else [args.layer]
    if not args.scan and args.layer is None:
        raise mechlab.InputError("Give --layer L (or --scan for every layer).")
    with progress(
        console, f"Reading {len(pairs)} pairs at {'every layer' if args.scan else f'layer {args.layer}'}"
    ):
        scan = mechlab.directions.scan(
            model, pairs, layers, kind=args.site, method=args.method, held_out=args.held_out, seed=args.seed
        )
    if args.scan:
        table = Table(title=escape(f"{pairs.name}: {args.method} direction per layer ({args.site})"))
        for name in ("layer", "train gap/σ", "held-out accuracy", "held-out effect size"):
            table.add_column(name, justify="right")
        for d in scan.directions:
            s = d.separation
            table.add_row(
                str(d.layer),
                f"{d.gap / d.spread:.2f}",
                "-" if s is None else f"{s.accuracy:.0%}",
                "-" if s is None else f"{s.effect_size:.2f}",
            )
        console.print(table)
    chosen = scan.at(args.layer) if args.layer is not None else scan.best()
    console.print(escape(chosen.summary()))
    if args.out:
        console.print(f"Wrote {escape(str(chosen.save(args.out)))}")
    if args.html:
        page = scan.add_to(mechlab.Page(f"Directions from {pairs.name}"))
        console.print(f"Wrote {escape(str(page.save(args.html)))}")
    return 0


def cmd_export_control_vector(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "out")
    loaded = load(args, console)
    model = loaded.model
    direction = _direction(args, model, console)
    site = mechlab.Site("resid_post", args.at if args.at is not None else direction.layer)
    vector = mechlab.control_vector(
        direction.vector,
        site,
        n_layers=model.cfg.n_layers,
        d_model=model.cfg.d_model,
        scale=args.strength,
        unit=direction.spread,
        model_hint=loaded.info.original_architecture or "",
    )
    path = mechlab.write_control_vector(vector, Path(args.out))
    console.print(f"Wrote {escape(str(path))}: {escape(vector.summary())}")
    console.print(
        f"Adds {args.strength:+g}σ (σ = {direction.spread:.3g}) along the direction to the output of "
        f"block {site.layer} (mechlab {site}) at every position. Run it with:"
    )
    gguf = loaded.info.path or "MODEL.gguf"
    console.print(f"  llama-cli -m {escape(str(gguf))} --control-vector {escape(str(path))}")
    console.print(f"  llama-server -m {escape(str(gguf))} --control-vector-scaled {escape(str(path))} 1.0")
    console.print("Ollama loads no control vectors: bake the fix into the weights instead (mechlab bake).")
    if args.verify:
        behaviour = mechlab.load_pronoun_set().behaviour("held_out")
        with progress(console, "Running the control vector in llama.cpp"):
            check = mechlab.check_control_vector(model, _gguf(loaded), vector, behaviour.prompts)
        console.print(escape(check.summary()))
        return 0 if check.passed else 1
    return 0


def cmd_bake(args: argparse.Namespace, console: Console) -> int:
    outputs(args, "out")
    loaded = load(args, console)
    source = _gguf(loaded)
    direction = _direction(args, loaded.model, console)
    layers = args.layers or None
    embeddings = not args.no_embeddings
    values = _mean_values(args, loaded.model, direction, layers, embeddings, console)
    with progress(console, f"Writing {args.out}"):
        result = mechlab.bake(
            source,
            direction.vector,
            Path(args.out),
            layers=layers,
            embeddings=embeddings,
            write_type=args.type,
            values=values,
        )
    console.print(escape(result.summary()))
    console.print("Ollama Modelfile:")
    console.print(escape(result.modelfile()), end="")
    console.print("Run it:")
    for line in result.commands(args.name):
        console.print(f"  {escape(line)}")
    if args.verify:
        pronouns = mechlab.load_pronoun_set()
        neutral = loaded.model.to_tokens(mechlab.neutral_text())[0]
        with progress(console, "Running the original and the baked file in llama.cpp"):
            check = mechlab.check_bake(
                loaded.model,
                source,
                result.path,
                direction.vector,
                pronouns.behaviour("held_out"),
                neutral,
                layers=layers,
                embeddings=embeddings,
                values=values,
            )
        console.print(escape(check.summary()))
    return 0


def _mean_values(
    args: argparse.Namespace, model: Any, direction: Any, layers: Any, embeddings: bool, console: Console
) -> dict | None:
    """The mean ablation's constants (--mean), calibrated on the pronoun case (--calibrate)."""
    if not args.mean:
        if args.calibrate:
            raise mechlab.InputError("--calibrate moves the mean ablation's last constant; add --mean.")
        return None
    if args.mean_texts:
        lines = Path(args.mean_texts).read_text(encoding="utf-8").splitlines()
        texts = [line for line in lines if line.strip()]
    else:
        texts = mechlab.neutral_text().splitlines()
        if args.pairs:
            pairs = _pairs(args.pairs)
            texts += [*pairs.positive, *pairs.negative]
    with progress(console, f"Averaging the writers along the direction over {len(texts)} texts"):
        values = mechlab.mean_values(model, direction.vector, texts, layers=layers, embeddings=embeddings)
    if args.calibrate:
        behaviour = mechlab.load_pronoun_set().behaviour("train")
        with progress(console, f"Calibrating on {len(behaviour.prompts)} training prompts"):
            values = mechlab.calibrate(model, direction.vector, values, behaviour)
    return values


HANDLERS: dict[str, Handler] = {
    "direction": cmd_direction,
    "export-control-vector": cmd_export_control_vector,
    "bake": cmd_bake,
}


def _direction_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--direction", metavar="FILE", help="a direction written by `mechlab direction --out`")
    p.add_argument(
        "--pairs",
        metavar="FILE",
        help="find the direction from contrastive pairs (JSONL positive/negative, or pronouns[:KIND])",
    )
    p.add_argument("--layer", type=int, help="the layer to read the direction at (with --pairs)")
    p.add_argument(
        "--method", choices=["mean", "pca"], default="mean", help="default: mean (difference of means)"
    )


def _mean_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--readout",
        nargs=2,
        metavar=("A", "B"),
        help="the direction the logit difference A − B is read through (unembedding, final norm)",
    )
    p.add_argument(
        "--mean",
        action="store_true",
        help="mean ablation: keep each writer's average component along the direction (added as "
        "output biases) instead of none",
    )
    p.add_argument(
        "--mean-texts",
        metavar="FILE",
        help="texts to average over, one a line (default: the shipped neutral text and the pairs)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="with --mean: move the last constant so the pronoun case's training prompts average a "
        "zero logit gap",
    )


def add_parsers(add: Add) -> None:
    """Add the fix sub-commands with ``add(name, help)`` from ``mechlab.cli.build_parser``."""
    p = add("direction", "Find the direction that separates contrastive prompt pairs at a layer.")
    p.add_argument(
        "--pairs",
        required=True,
        metavar="FILE",
        help='JSONL with {"positive": ..., "negative": ...} per line, or '
        "pronouns[:answer|occupation|gendered] (the shipped occupation/pronoun pairs)",
    )
    p.add_argument("--layer", type=int, help="the layer to read (resid_post by default)")
    p.add_argument(
        "--scan", action="store_true", help="measure every layer; --layer then picks the one saved"
    )
    p.add_argument("--site", default="resid_post", help="activation kind (default resid_post)")
    p.add_argument(
        "--method", choices=["mean", "pca"], default="mean", help="default: mean (difference of means)"
    )
    p.add_argument("--held-out", type=float, default=0.25, help="fraction of pairs held out (default 0.25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="FILE", help="write the direction (safetensors) for the other commands")
    p.add_argument("--html", metavar="FILE", help="also write a page with the separation per layer")

    p = add("export-control-vector", "Write a direction as a llama.cpp control vector (GGUF).")
    _direction_source(p)
    p.add_argument(
        "--strength", type=float, default=4.0, help="how many σ to add (default 4; negative subtracts)"
    )
    p.add_argument(
        "--at", type=int, help="the block whose output it is added to (default: the direction's layer)"
    )
    p.add_argument("--out", metavar="FILE", required=True, help="the control vector file to write")
    p.add_argument(
        "--verify", action="store_true", help="compare its logit changes in llama.cpp with mechlab's steering"
    )

    p = add("bake", "Project a direction out of a GGUF file's weights and write a new GGUF.")
    _direction_source(p)
    _mean_options(p)
    p.add_argument("--out", metavar="FILE", required=True, help="the GGUF file to write")
    p.add_argument("--layers", type=int_list, help="blocks whose writers to edit (default: all)")
    p.add_argument("--no-embeddings", action="store_true", help="leave the embeddings as they are")
    p.add_argument("--type", help="write edited tensors in this ggml type (e.g. Q8_0; default: their own)")
    p.add_argument("--name", default="fixed", help="the Ollama model name in the printed commands")
    p.add_argument(
        "--verify",
        action="store_true",
        help="measure the pronoun case in llama.cpp before and after (held-out occupations, neutral text)",
    )
