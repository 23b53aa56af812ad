"""Benchmark: a TopK SAE on SmolLM2's residual stream at layer 15 of 30, trained on this machine.

1. Builds (or reuses, from ``$MECHLAB_CACHE_DIR/saes/``) the SAE with the recipe below: the corpus's
   train split, activations captured once to shards (``--harvest-tokens`` tokens, resumable), then
   ``--n-tokens`` training rows drawn from them (several epochs), checkpointed and resumable.
   The same SAE comes from the CLI::

       mechlab sae train smollm2 --site resid_post.15 --d-sae 9216 --k 64 --n-tokens 16000000 \\
           --harvest-tokens 1040384 --batch-size 1024 --lr 3e-4 --dead-after-tokens 100000 \\
           --autocast bfloat16 --out DIR

2. Evaluates it on held-out windows (``mechlab.evaluate_sae``): fraction of variance explained,
   L0, dead and dense latents, and cross-entropy with the SAE spliced in vs clean vs zero-ablated
   (loss recovered).
3. Prints the harvest and training throughput (tokens/s) measured during the build, and whether each
   target is met: FVE ≥ 0.9 at L0 ≤ 64 with ≤ 5% dead latents, loss recovered ≥ 0.8.

Exits non-zero when a target is missed.

Run: ``.venv/bin/python bench/sae.py`` (the first time: the harvest ~6 min; training took 87 min on one
thread while another job used the other core; ``--threads N`` pins torch).
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import mechlab

SITE = "resid_post.15"
RECIPE = {
    "d_sae": 9216,
    "k": 64,
    "n_tokens": 16_000_000,
    "batch_size": 1024,
    "lr": 3e-4,
    "dead_after_tokens": 100_000,
    "autocast": "bfloat16",
}
HARVEST_TOKENS = 512 * 16 * 127  # 512 forward batches of 16 windows (127 tokens each after the first)
EVAL_TOKENS = 8_192
TARGETS = {"fve": 0.9, "l0": 64, "dead_fraction": 0.05, "loss_recovered": 0.8}


def sae_dir() -> Path:
    from mechlab.models.cache import cache_dir

    name = f"smollm2-{SITE}-topk-{RECIPE['d_sae']}-k{RECIPE['k']}-n{RECIPE['n_tokens'] // 10**6}M"
    return cache_dir() / "saes" / f"{name}-h{HARVEST_TOKENS // 1000}k"


def harvest_dir() -> Path:
    """The captured activations, shared by every recipe trained on them."""
    from mechlab.models.cache import cache_dir

    name = f"smollm2-{SITE}-{HARVEST_TOKENS // 1000}k-{RECIPE['autocast'] or 'float32'}"
    return cache_dir() / "saes" / "harvests" / name


def build(model: Any, out: Path) -> dict[str, float]:
    """Train the recipe's SAE into ``out``; returns the measured throughputs."""
    from mechlab.dictionaries.train_config import TrainConfig

    config = TrainConfig(**RECIPE)  # type: ignore[arg-type]
    work = out.parent / (out.name + ".work")
    marks: dict[str, float] = {}
    seen: list[Any] = []

    def on_harvest(state: Any) -> None:
        marks.setdefault("harvest_start", time.perf_counter())
        marks["harvest_end"] = time.perf_counter()
        marks["harvest_batches"] = state.done
        print(f"harvest {state.done}/{state.total}", flush=True)

    def on_step(state: Any) -> None:
        seen.append(state)
        if state.done % 10 == 0 or state.done == state.total:
            print(f"step {state.done}/{state.total} loss {state.loss:.2f} {state.status}", flush=True)

    mechlab.train_sae(
        model,
        SITE,
        config,
        out_dir=out,
        checkpoint_dir=work / "checkpoint",
        harvest_dir=harvest_dir(),
        harvest_tokens=HARVEST_TOKENS,
        model_name="smollm2",
        progress=on_step,
        harvest_progress=on_harvest,
    )
    # A run resumed from a finished checkpoint trains no step and measures nothing.
    figures = {"train_tokens_per_second": seen[-1].tokens_per_second} if seen else {}
    if "harvest_batches" in marks and marks["harvest_end"] > marks["harvest_start"]:
        tokens = (marks["harvest_batches"] - 1) * config.model_batch * (config.context - 1)
        figures["harvest_tokens_per_second"] = tokens / (marks["harvest_end"] - marks["harvest_start"])
    (out / "build.json").write_text(
        json.dumps({"recipe": RECIPE, "harvest_tokens": HARVEST_TOKENS, **figures})
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--build-only", action="store_true", help="train (or reuse) the SAE, skip evaluation")
    parser.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = mechlab.load_model("smollm2").model
    out = sae_dir()
    print(f"SAE: {out}  threads: {torch.get_num_threads()}", flush=True)
    if not (out / "cfg.json").is_file():
        figures = build(model, out)
    else:
        figures = json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else {}
    for name, value in figures.items():
        if name.endswith("per_second"):
            print(f"{name}: {value:,.0f}")
    if args.build_only:
        return 0
    sae = mechlab.load_sae(out)
    started = time.perf_counter()
    result = mechlab.evaluate_sae(model, sae, n_tokens=args.eval_tokens)
    print(f"evaluation: {time.perf_counter() - started:.0f} s on {result.n_tokens:,} held-out tokens")
    print(result.summary())
    met = {
        "fve": result.fve >= TARGETS["fve"],
        "l0": result.l0 <= TARGETS["l0"],
        "dead_fraction": result.dead_fraction <= TARGETS["dead_fraction"],
        "loss_recovered": result.loss_recovered >= TARGETS["loss_recovered"],
    }
    for name, ok in met.items():
        print(f"target {name}: {'met' if ok else 'MISSED'} (target {TARGETS[name]})")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
