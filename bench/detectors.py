"""Benchmark: run_detectors against the bare forward passes it needs, side by side.

    python bench/detectors.py [--model smollm2] [--samples 8] [--repeats 3]

Induction needs two forward passes per batch (the repeated tokens and the control with the second
copy shuffled); previous-token reads the same cached patterns. The ratio shows what detection adds
on top of running the model: caching the patterns, scoring, baselines, intervals.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import mechlab


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = mechlab.load_model(args.model).model
    tokens = mechlab.repeated_tokens(model, args.samples)

    def forwards() -> None:
        with torch.no_grad():
            model(tokens)
            model(tokens)

    def detect() -> None:
        mechlab.run_detectors(
            model, ["induction", "previous-token"], n_samples=args.samples, batch_size=args.samples
        )

    forwards()  # warm-up
    bare, full = timed(forwards, args.repeats), timed(detect, args.repeats)
    print(f"model: {args.model}, {args.samples} sequences of {tokens.shape[1]} tokens")
    print(f"two bare forward passes:                 {bare:6.2f} s")
    print(f"run_detectors(induction, previous-token): {full:6.2f} s")
    print(f"ratio: {full / bare:.2f}×")


if __name__ == "__main__":
    main()
