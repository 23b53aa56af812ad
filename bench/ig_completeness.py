"""Integrated Gradients on SmolLM2: completeness error against quadrature, steps and baseline.

Completeness says the attributions sum to F(x) − F(baseline); the relative gap left by the numerical
integral shows how many gradient evaluations a prompt needs. ``adaptive`` (mechlab's default) stops
once its error estimate is within 1%; the fixed rules spend exactly ``steps``. Also shown: holding
the first token (the attention sink) at its embedding versus interpolating it.

    python -m bench.ig_completeness [--quick]
"""

import argparse
import time

import mechlab
from mechlab import integrated_gradients, make_target

PROMPTS = (
    ("The Eiffel Tower is located in the city of", " Paris", None),
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ("The nurse was tired because", " she", " he"),
    ("The capital of Germany is", " Berlin", None),
)
# (rule, steps, keep_first, baseline)
RUNS = (
    ("adaptive", 128, True, "."),
    ("gauss-legendre", 16, True, "."),
    ("gauss-legendre", 32, True, "."),
    ("gauss-legendre", 64, True, "."),
    ("riemann-middle", 32, True, "."),
    ("riemann-trapezoid", 32, True, "."),
    ("adaptive", 128, True, "pad"),
    ("gauss-legendre", 32, True, "pad"),
    ("gauss-legendre", 32, False, "."),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="first prompt only")
    args = parser.parse_args()
    model = mechlab.load_model("smollm2").model
    print(
        f"{'prompt':<24} {'rule':<18} {'base':>4} {'keep 1st':>8} {'steps':>5} {'used':>5} "
        f"{'error':>9} {'time':>7}"
    )
    for prompt, answer, contrast in PROMPTS[:1] if args.quick else PROMPTS:
        target = make_target(model, answer, contrast=contrast)
        print(f"{target.label}")
        for rule, steps, keep_first, baseline in RUNS:
            start = time.perf_counter()
            result = integrated_gradients(
                model, prompt, target, baseline=baseline, steps=steps, rule=rule, keep_first=keep_first
            )
            seconds = time.perf_counter() - start
            error = 100 * (result.completeness_error or 0.0)
            print(
                f"{prompt[:23]:<24} {rule:<18} {baseline:>4} {keep_first!s:>8} {steps:>5} {result.steps:>5} "
                f"{error:>8.2f}% {seconds:>6.1f}s"
            )


if __name__ == "__main__":
    main()
