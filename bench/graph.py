"""Benchmark: SmolLM2 transcoders and an attribution graph of a 10–20 token prompt, on this machine.

1. ``--train DIR``: trains one TopK transcoder per layer (``mlp_in.L`` → ``mlp_out.L``) with the
   recipe below on the corpus's train split (``mechlab.train_transcoders``: one capture pass, then
   the SAE trainer per layer), saves them as ``DIR/layer_L``, evaluates them on held-out windows
   (FVE of each MLP output, L0, dead latents, next-token loss with every MLP replaced) and prints
   the time each step took.
2. Computes the attribution graph of ``--prompt`` with the transcoders in ``DIR``
   (``mechlab.attribute_graph``), prints its size, the time, the replacement and completeness
   scores, and the intervention agreement r over the top features (target: r ≥ 0.8); names the
   kept features (layer 0's by the vocabulary tokens that excite them alone, the others by their top
   contexts in ``NAMING_TOKENS`` corpus tokens; all by their promoted tokens) and prints each
   prompt token's strongest path through features to the target (``mechlab.feature_paths``) and,
   for the features on the top three, the change of the output when each is ablated in the real
   model against the graph's prediction;
   writes the page and the JSON when ``--out`` is given.

Run: ``.venv/bin/python bench/graph.py --train transcoders/smollm2`` (see the recipe for the cost),
then ``.venv/bin/python bench/graph.py --transcoders transcoders/smollm2 --out graph.html``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import mechlab
from mechlab.graphs.paths import step_label
from mechlab.graphs.verify import ablation_effect

PROMPT = "The Eiffel Tower is located in the city of"
RECIPE = {
    "d_sae": 2304,
    "k": 32,
    "n_tokens": 1_000_000,
    "batch_size": 256,  # 3,906 steps; layer 13's held-out FVE 0.596 against 0.561 at batch 1024
    "lr": 1e-3,
    "dead_after_tokens": 50_000,
    "autocast": "bfloat16",
    "skip": False,  # True: better MLP FVE, but the graph's intervention agreement fell to r = 0.27 (README)
}
NAMING_TOKENS = 16_384  # corpus tokens read for the features' top contexts (their names)
CAPTURE_TOKENS = 782 * 128  # 100,096 tokens in 128-token windows: 230 MB of float16 rows per layer


def train(model: object, directory: Path, capture_tokens: int, n_layers: int | None) -> None:
    tokens = mechlab.corpus_tokens(model, capture_tokens, context=128)
    config = mechlab.TrainConfig(architecture="topk", **RECIPE)
    layers = None if n_layers is None else list(range(n_layers))
    started = time.perf_counter()
    transcoders = mechlab.train_transcoders(
        model,
        tokens,
        config,
        layers=layers,
        out_dir=directory,
        progress=lambda s: print(
            f"  trained {s.done}/{s.total} layers at {time.perf_counter() - started:.0f} s", flush=True
        ),
    )
    print(
        f"training: {time.perf_counter() - started:.0f} s for {len(transcoders)} layers "
        f"({capture_tokens:,} captured tokens, {RECIPE['n_tokens']:,} rows per layer)"
    )
    held = mechlab.corpus_tokens(model, 8 * 128, context=128, split="heldout")
    started = time.perf_counter()
    result = mechlab.evaluate_transcoders(model, transcoders, held)
    print(result.summary())
    print(f"evaluation: {time.perf_counter() - started:.0f} s")
    (directory / "evaluation.json").write_text(json.dumps(result.to_dict(), indent=1))


def graph(model: object, directory: Path, prompt: str, out: Path | None, max_features: int, top: int) -> None:
    transcoders = mechlab.load_transcoders(directory)
    started = time.perf_counter()
    result = mechlab.attribute_graph(
        model, transcoders, prompt, max_feature_nodes=max_features, batch_size=32
    )
    elapsed = time.perf_counter() - started
    replacement, completeness = mechlab.graph_scores(result)
    pruned = mechlab.prune_graph(result)
    print(f"prompt: {prompt!r} ({result.n_pos} tokens)")
    print(
        f"graph: {elapsed:.1f} s; {result.n_active:,} active features, rows for {result.n_features:,}; "
        f"{result.n_logits} logit nodes {list(result.logit_labels)[:5]}"
    )
    print(
        f"pruned: {int(pruned.node_mask[: result.n_features].sum())} features, "
        f"{int(pruned.edge_mask.sum())} edges"
    )
    print(f"replacement score {replacement:.3f} · completeness score {completeness:.3f}")
    started = time.perf_counter()
    check = mechlab.verify_graph(model, transcoders, result, top=top)
    print(
        f"intervention agreement r = {check.r:.3f} over the top {len(check.nodes)} features "
        f"({time.perf_counter() - started:.1f} s; direct edges alone: r = {check.r_direct:.3f}); "
        f"target r ≥ 0.8: {'met' if check.r >= 0.8 else 'NOT met'}"
    )
    started = time.perf_counter()
    effects = mechlab.logit_effects(model, transcoders, result)
    corpus = mechlab.corpus_tokens(model, NAMING_TOKENS, context=64, split="heldout")
    reports = mechlab.feature_reports(model, transcoders, result, pruned, corpus)
    print(f"feature pages from {NAMING_TOKENS:,} corpus tokens: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    inputs = mechlab.vocabulary_inputs(model, transcoders, result, pruned)
    names = mechlab.feature_names(result, effects, reports, inputs=inputs)
    print(f"vocabulary through layer 0 for its features' names: {time.perf_counter() - started:.1f} s")
    paths = mechlab.feature_paths(result, pruned)
    print(f"strongest paths through features to {result.logit_labels[0]!r}, per prompt token:")
    for path in paths:
        print("  " + mechlab.describe_path(result, path, names))
    print("the top 3 paths' features ablated in the real model: the output's change, predicted → measured")
    verified = dict(zip(check.nodes, zip(check.predicted, check.measured, strict=True), strict=True))
    for node in dict.fromkeys(n for path in paths[:3] for n in path.nodes if n < result.n_features):
        predicted, measured = verified.get(node) or ablation_effect(model, transcoders, result, node)
        print(f"  {step_label(result, node, names)}: {predicted:+.4f} → {measured:+.4f}")
    if out is not None:
        page = mechlab.graph_page(
            result, pruned=pruned, verification=check, effects=effects, reports=reports, inputs=inputs
        )
        page.save(out)
        mechlab.save_graph_json(result, out.with_suffix(".json"), pruned, names=names)
        print(f"wrote {out} and {out.with_suffix('.json')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, help="train transcoders into this directory first")
    parser.add_argument("--transcoders", type=Path, help="the transcoder directory for the graph")
    parser.add_argument("--capture-tokens", type=int, default=CAPTURE_TOKENS)
    parser.add_argument("--layers", type=int, default=None, help="train only the first N layers")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--max-features", type=int, default=1024)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = mechlab.load_model("smollm2").model
    if args.train:
        train(model, args.train, args.capture_tokens, args.layers)
    directory = args.transcoders or args.train
    if directory is not None:
        graph(model, directory, args.prompt, args.out, args.max_features, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
