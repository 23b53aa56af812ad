"""Integrated Gradients on SmolLM2: completeness error against the number of steps, per quadrature.

Completeness says the attributions sum to F(x) − F(baseline); the relative gap left by the numerical
integral shows how many steps a prompt needs. Run: ``python -m bench.ig_completeness [--quick]``.
"""

import argparse
import time

import mechlab
from mechlab.explain import integrated_gradients, make_target

PROMPTS = (
    ("The Eiffel Tower is located in the city of", " Paris", None),
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ("The nurse said that", " she", " he"),
    ("The capital of Germany is", " Berlin", None),
)
RUNS = (
    ("adaptive", 128, True),
    ("gauss-legendre", 16, True),
    ("gauss-legendre", 32, True),
    ("gauss-legendre", 64, True),
    ("riemann-middle", 32, True),
    ("riemann-trapezoid", 32, True),
    ("gauss-legendre", 32, False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="first prompt only")
    args = parser.parse_args()
    model = mechlab.load_model("smollm2").model
    print(
        f"{'prompt':<28} {'target':<26} {'rule':<18} {'steps':>5} {'used':>5} {'keep 1st':>8} "
        f"{'error':>9} {'time':>7}"
    )
    for prompt, answer, contrast in PROMPTS[:1] if args.quick else PROMPTS:
        target = make_target(model, answer, contrast=contrast)
        for rule, steps, keep_first in RUNS:
            start = time.perf_counter()
            result = integrated_gradients(
                model, prompt, target, steps=steps, rule=rule, keep_first=keep_first
            )
            seconds = time.perf_counter() - start
            error = result.completeness_error or 0.0
            print(
                f"{prompt[:27]:<28} {target.label[:25]:<26} {rule:<18} {steps:>5} {result.steps:>5} "
                f"{keep_first!s:>8} "
                f"{100 * error:>8.2f}% {seconds:>6.1f}s"
            )


if __name__ == "__main__":
    main()
