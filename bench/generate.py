"""Benchmark: ``mechlab.generate`` against transformers' own ``generate``, side by side.

On SmolLM2, both forced to the same number of greedy steps (no early stop at end-of-sequence),
interleaved in one process on one thread:

- transformers' ``generate`` on the model transformers loads from the same converted copy, with its
  key/value cache (``use_cache=True``) and without it (``use_cache=False``);
- ``mechlab.generate`` on the hooked model (its own decoding loop, key/value cache on).

Prints the median time of each, the ratios (target: mechlab / transformers with its cache ≤ 1.3),
and whether the tokens are identical (they must be). Exits non-zero when a target is missed.

Run: ``.venv/bin/python bench/generate.py [--steps 20] [--repeats 5]``.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import mechlab
from mechlab.models import decoding

PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "When Mary and John went to the store, John gave a drink to",
    "def fibonacci(n):\n    if n < 2:\n        return",
)
MAX_RATIO = 1.3


def timed(fn: Callable[[], list[int]]) -> tuple[list[int], float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="greedy steps per generation")
    parser.add_argument("--repeats", type=int, default=5, help="rounds over the prompts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    loaded = mechlab.load_model("smollm2")
    model = loaded.model
    reference = AutoModelForCausalLM.from_pretrained(loaded.info.converted_cache, dtype=torch.float32).eval()

    def ours(tokens: torch.Tensor) -> list[int]:
        return list(decoding.decode(model, tokens, max_new_tokens=args.steps).token_ids)

    def theirs(tokens: torch.Tensor, use_cache: bool) -> list[int]:
        with torch.no_grad():
            out = reference.generate(
                tokens,
                attention_mask=torch.ones_like(tokens),
                max_new_tokens=args.steps,
                do_sample=False,
                use_cache=use_cache,
                eos_token_id=None,  # no early stop: every run takes exactly args.steps steps
                pad_token_id=loaded.tokenizer.eos_token_id,
            )
        return out[0, tokens.shape[-1] :].tolist()

    runners: dict[str, Callable[[torch.Tensor], list[int]]] = {
        "mechlab.generate": ours,
        "transformers (cache on)": lambda t: theirs(t, True),
        "transformers (cache off)": lambda t: theirs(t, False),
    }
    tokens = [model.to_tokens(p) for p in PROMPTS]
    for run in runners.values():  # warm-up: one of each, untimed
        run(tokens[0])
    times: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, list[list[int]]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for prompt_tokens in tokens:
            for name, run in runners.items():
                out, seconds = timed(lambda: run(prompt_tokens))  # noqa: B023
                times[name].append(seconds)
                outputs[name].append(out)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"SmolLM2, {args.steps} greedy steps, {len(PROMPTS)} prompts × {args.repeats}, 1 thread")
    for name, seconds in median.items():
        print(f"  {name:26s} {seconds * 1000:8.1f} ms per generation (median)")
    ratio_on = median["mechlab.generate"] / median["transformers (cache on)"]
    ratio_off = median["mechlab.generate"] / median["transformers (cache off)"]
    identical = outputs["mechlab.generate"] == outputs["transformers (cache on)"]
    identical_off = outputs["mechlab.generate"] == outputs["transformers (cache off)"]
    met = ratio_on <= MAX_RATIO
    print(
        f"ratio mechlab / transformers (cache on):  {ratio_on:5.2f}×  target ≤ {MAX_RATIO}: "
        f"{'met' if met else 'MISSED'}"
    )
    print(f"ratio mechlab / transformers (cache off): {ratio_off:5.2f}×")
    print(f"tokens identical: cache on {identical}, cache off {identical_off}")
    if not (met and identical and identical_off):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
