"""Find the induction circuit in a model and test it causally.

The induction circuit (Elhage et al. 2021; Olsson et al. 2022) completes repeated sequences:
``… A B … A → B``. A *previous-token head* copies "the token before me was A" into each position;
an *induction head* in a later layer uses that as its key (K-composition): from the second ``A`` it
finds the position whose previous token was ``A`` — the ``B`` — and copies ``B``.

This script gathers four kinds of evidence:

1. Detection: induction and previous-token heads on repeated random tokens (scores with 95%
   intervals, chance baselines, and a positional control).
2. Weights: the K-composition of each previous-token head into each induction head, beside its
   Q- and V-composition and the score of random matrices.
3. Ablation and patching: zero-ablate the previous-token heads and measure the induction heads'
   scores; then keep the clean run and patch in only the ablated run's keys (or only its queries) at
   the induction heads' layers. If the circuit goes through the keys, patching keys reproduces the
   collapse and patching queries does not.
4. Behaviour: the loss on the repeated half with and without the induction heads.

Usage::

    python -m circuits.induction --model toy:DIR --out out/induction-toy
    python -m circuits.induction --train-toy --out out/induction-toy     # trains one first (~1 min)
    python -m circuits.induction --model smollm2 --out out/induction-smollm2

Writes ``induction.json`` (every number) and PNG figures into ``--out``. Uses only mechlab's public API.
"""

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

import mechlab
from mechlab import Site

Head = tuple[int, int]


def zero_heads(heads: Iterable[Head]) -> dict[Site, Callable[..., torch.Tensor | None]]:
    """Hooks that zero the output (``z``) of each head."""
    return mechlab.zero_ablation(Site("z", layer, head) for layer, head in heads)


def head_scores(result: mechlab.DetectorResult, heads: list[Head]) -> dict[str, Any]:
    """The score of each of ``heads`` in ``result`` (mean and 95% interval)."""
    stats = result.stats
    return {
        f"{layer}.{head}": {
            "score": float(stats.mean[layer, head]),
            "interval": [float(stats.low[layer, head]), float(stats.high[layer, head])],
        }
        for layer, head in heads
    }


def induction_scores(model: Any, heads: list[Head], *, n_samples: int, seed: int) -> dict[str, Any]:
    """Induction score of ``heads`` (mean and 95% interval) under whatever hooks are attached."""
    result = mechlab.run_detectors(model, ["induction"], n_samples=n_samples, seed=seed)["induction"]
    return head_scores(result, heads)


def composition(model: Any, prev: list[Head], induction: list[Head]) -> dict[str, Any]:
    """Q/K/V composition of every previous-token head into every induction head."""
    pairs = {
        f"{s[0]}.{s[1]} -> {d[0]}.{d[1]}": {
            kind: round(mechlab.composition_score(model, s, d, kind), 4) for kind in ("q", "k", "v")
        }
        for s in prev
        for d in induction
        if s[0] < d[0]
    }
    return {"pairs": pairs, "random_baseline": round(mechlab.composition_baseline(model), 4)}


def patched_scores(model: Any, induction: list[Head], prev: list[Head], *, seed: int) -> dict[str, Any]:
    """Induction scores with only the keys (or only the queries) taken from the prev-ablated run."""
    detector = mechlab.DetectorRegistry.from_entry_points().create("induction")
    tokens = mechlab.repeated_tokens(model, 8, seed=seed + 1000)
    layers = sorted({layer for layer, _ in induction})
    patterns = [Site("pattern", layer).hook_name for layer in range(model.cfg.n_layers)]
    with torch.no_grad(), mechlab.hooked(model, zero_heads(prev)):
        _, ablated = model.run_with_cache(
            tokens, names_filter=[Site(kind, layer).hook_name for kind in ("q", "k") for layer in layers]
        )
    scores = {}
    for kind in ("none", "k", "q"):
        patch = {} if kind == "none" else {Site(kind, layer): _replace_with(ablated) for layer in layers}
        with torch.no_grad(), mechlab.hooked(model, patch):
            _, cache = model.run_with_cache(tokens, names_filter=patterns)
        per_head = detector.score(model, cache, tokens).mean(0)
        scores[kind] = {f"{layer}.{head}": float(per_head[layer, head]) for layer, head in induction}
    return {"clean": scores["none"], "keys_patched": scores["k"], "queries_patched": scores["q"]}


def _replace_with(cache: Any) -> Callable[[torch.Tensor, Site], torch.Tensor]:
    return lambda act, site: cache[site.hook_name].clone()


def repeated_loss(model: Any, heads: list[Head], *, seed: int) -> dict[str, float]:
    """Mean next-token loss on each copy of repeated random tokens, with ``heads`` zero-ablated."""
    tokens = mechlab.repeated_tokens(model, 8, seed=seed + 2000)
    n = (tokens.shape[1] - 1) // 2
    with torch.no_grad(), mechlab.hooked(model, zero_heads(heads)):
        logits = model(tokens)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none"
    ).view(tokens.shape[0], -1)
    # Predictions at positions 1..n-1 target the first copy; n+1..2n-1 target the second copy.
    return {"first_copy": float(losses[:, 1:n].mean()), "second_copy": float(losses[:, n + 1 :].mean())}


def choose_heads(report: mechlab.DetectorReport, max_heads: int) -> tuple[list[Head], list[Head]]:
    """Detected induction heads (top ``max_heads``) and the detected previous-token heads below them."""
    induction = [(r.layer, r.head) for r in report["induction"].detected()[:max_heads]]
    if not induction:
        raise SystemExit("No induction head detected; nothing to analyse. See the detector output above.")
    first_layer = min(layer for layer, _ in induction)
    prev = [(r.layer, r.head) for r in report["previous-token"].detected() if r.layer < first_layer]
    return induction, prev[:max_heads]


def analyse(model: Any, out: Path, *, n_samples: int, seed: int, max_heads: int) -> dict[str, Any]:
    report = mechlab.run_detectors(model, ["induction", "previous-token"], n_samples=n_samples, seed=seed)
    induction, prev = choose_heads(report, max_heads)
    labels = {f"{layer}.{head}" for layer, head in induction + prev}
    for name in ("induction", "previous-token"):
        rows = [str(row) for row in report[name].detected() if row.label in labels]
        print(f"{name} heads analysed: {', '.join(rows) or 'none'}")
    summary: dict[str, Any] = {
        "settings": report.settings,
        "induction_heads": [r._asdict() for r in report["induction"].top(max(len(induction), 5))],
        "previous_token_heads": [r._asdict() for r in report["previous-token"].top(max(len(prev), 5))],
        "composition": composition(model, prev, induction),
    }
    scores = {"clean": head_scores(report["induction"], induction)}  # same sequences as the ablations
    if prev:
        with mechlab.hooked(model, zero_heads(prev[:1])):
            scores[f"ablate {prev[0][0]}.{prev[0][1]}"] = induction_scores(
                model, induction, n_samples=n_samples, seed=seed
            )
        with mechlab.hooked(model, zero_heads(prev)):
            scores["ablate all previous-token heads"] = induction_scores(
                model, induction, n_samples=n_samples, seed=seed
            )
        summary["key_query_patching"] = patched_scores(model, induction, prev, seed=seed)
    summary["ablation"] = {
        "ablated_previous_token_heads": [f"{layer}.{head}" for layer, head in prev],
        "scores": scores,
    }
    summary["loss"] = {
        "clean": repeated_loss(model, [], seed=seed),
        "induction_ablated": repeated_loss(model, induction, seed=seed),
    }
    _figures(report, summary, out)
    return summary


def _figures(report: mechlab.DetectorReport, summary: dict[str, Any], out: Path) -> None:
    report["induction"].plot().savefig(out / "induction_scores.png", dpi=110)
    report["previous-token"].plot().savefig(out / "previous_token_scores.png", dpi=110)
    ablation = {
        name: {h: v["score"] for h, v in heads.items()}
        for name, heads in summary["ablation"]["scores"].items()
    }
    mechlab.figures.bars(
        ablation, title="Induction score under ablation of previous-token heads", ylabel="induction score"
    ).savefig(out / "ablation.png", dpi=110)
    if "key_query_patching" in summary:
        mechlab.figures.bars(
            summary["key_query_patching"],
            title="Only keys vs only queries from the ablated run",
            ylabel="induction score",
        ).savefig(out / "key_query_patching.png", dpi=110)
    loss = {name: value for name, value in summary["loss"].items()}
    mechlab.figures.bars(loss, title="Loss on repeated random tokens", ylabel="nats").savefig(
        out / "loss.png", dpi=110
    )


def print_summary(summary: dict[str, Any]) -> None:
    for name, heads in summary["ablation"]["scores"].items():
        cells = ", ".join(
            f"{h} {v['score']:.2f} [{v['interval'][0]:.2f}, {v['interval'][1]:.2f}]" for h, v in heads.items()
        )
        print(f"induction score, {name}: {cells}")
    if "key_query_patching" in summary:
        for name, heads in summary["key_query_patching"].items():
            print(f"induction score, {name}: " + ", ".join(f"{h} {v:.2f}" for h, v in heads.items()))
    top = sorted(summary["composition"]["pairs"].items(), key=lambda item: -item[1]["k"])[:5]
    print(
        f"K-composition (random matrices {summary['composition']['random_baseline']:.3f}): "
        + ", ".join(f"{p} K {s['k']:.3f} Q {s['q']:.3f} V {s['v']:.3f}" for p, s in top)
    )
    clean, ablated = summary["loss"]["clean"], summary["loss"]["induction_ablated"]
    print(
        f"loss on the repeated half: {clean['second_copy']:.3f} nats; induction heads ablated: "
        f"{ablated['second_copy']:.3f} (first half {clean['first_copy']:.3f})"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model source: toy:DIR, smollm2, a .gguf path, …")
    source.add_argument("--train-toy", action="store_true", help="train toy:attn-only-2l first (~1 min)")
    parser.add_argument("--out", type=Path, default=Path("out/induction"))
    parser.add_argument("--samples", type=int, default=16, help="random sequences per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-heads", type=_positive, default=6, help="heads of each kind analysed")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_toy:
        config = mechlab.ToyTrainConfig(seed=args.seed)

        def report(step: mechlab.TrainStep) -> None:
            print(f"step {step.step}/{config.steps}  loss {step.loss:.3f}  {step.seconds:.0f} s")

        trained = mechlab.train_induction_toy(config, progress=report, log_every=100)
        directory = trained.save(args.out / "toy-model")
        print(
            f"trained a toy model in {trained.seconds:.0f} s (loss {trained.final_loss:.3f}): toy:{directory}"
        )
        model = trained.model
    else:
        model = mechlab.load_model(args.model).model
    summary = analyse(model, args.out, n_samples=args.samples, seed=args.seed, max_heads=args.max_heads)
    summary["model"] = args.model or "toy (trained by this run)"
    (args.out / "induction.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    print(f"wrote {args.out / 'induction.json'} and figures to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
