"""Benchmark: the memory plan against the memory really used, side by side.

For each model and mode, a fresh process loads the model from its converted copy in that mode (the
copies are written beforehand, in this process) and runs a 32-token forward pass, Integrated
Gradients at the default settings, or an all-heads attribution-patching sweep — one step per process;
the OS's peak resident set size of each (``ru_maxrss``) is printed next to ``mechlab.plan_memory``'s
estimate and their ratio.

Run: ``.venv/bin/python bench/memory_plan.py [--models smollm2 gemma3-270m] [--modes float32 bfloat16]``.
"""

import argparse
import json
import subprocess
import sys

STEP = """
import json, resource, sys, torch, mechlab
source, mode, step = sys.argv[1:4]
loaded = mechlab.load_model(source, weights=mode, check_memory=False)
model = loaded.model
tokens = torch.randint(100, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    model(tokens)
if step == "ig":
    mechlab.integrated_gradients(model, tokens, mechlab.make_target(model, int(tokens[0, -1])))
if step == "atp":
    mechlab.attribution_patch(model, tokens, mechlab.Ablation("zero"), "z", lambda logits: logits[:, -1, 5])
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def measure(source: str, mode: str, step: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", STEP, source, mode, step], capture_output=True, text=True, check=True
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"])
    parser.add_argument("--modes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()

    import mechlab

    print(f"{'model':<14}{'mode':<10}{'step':<9}{'estimate MB':>12}{'measured MB':>13}{'ratio':>7}")
    for source in args.models:
        for mode in args.modes:  # every copy written outside the measured runs
            mechlab.load_model(source, weights=mode, check_memory=False)
        plan = mechlab.plan_memory(source)
        for mode in args.modes:
            estimates = plan[mode]
            for step, estimate in (
                ("forward", estimates.forward),
                ("ig", estimates.ig),
                ("atp", estimates.atp),
            ):
                measured = measure(source, mode, step)
                print(
                    f"{source:<14}{mode:<10}{step:<9}{estimate / 2**20:>12,.0f}{measured / 2**20:>13,.0f}"
                    f"{estimate / measured:>7.2f}"
                )


if __name__ == "__main__":
    main()
