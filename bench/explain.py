"""Benchmark: wall time of `mechlab explain` on SmolLM2 at the default settings, per stage.

    python bench/explain.py [--prompt TEXT] [--max-new-tokens 20]

Runs twice in one process with a fresh cache directory: the first run computes the detector
results, the second reads them from the cache (as every later explanation of the model does).
"""

import argparse
import os
import tempfile
import time

import mechlab
from mechlab.report.explain import explain
from mechlab.report.settings import ExplainSettings

PROMPT = "When Mary and John went to the store, John gave a drink to"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MECHLAB_CACHE_DIR"] = cache
        start = time.perf_counter()
        loaded = mechlab.load_model("smollm2")
        load_s = time.perf_counter() - start
        settings = ExplainSettings(max_new_tokens=args.max_new_tokens)
        runs = [explain(loaded, args.prompt, settings=settings) for _ in range(2)]
    n_prompt = int(runs[0].completion.prompt_tokens.shape[1])
    n_new = len(runs[0].completion.steps)
    print(f"prompt {n_prompt} tokens + {n_new} generated; load {load_s:.1f} s (incl. conversion)")
    print(f"{'stage':<28}{'first run':>12}{'cached detectors':>18}")
    for stage in runs[0].manifest["timings_s"]:
        first, second = (run.manifest["timings_s"].get(stage, 0.0) for run in runs)
        print(f"{stage:<28}{first:>11.2f}s{second:>17.2f}s")
    error = runs[0].ig.completeness_error or 0.0
    print(f"IG completeness error {100 * error:.2f}% with {runs[0].ig.steps} gradient evaluations")


if __name__ == "__main__":
    main()
