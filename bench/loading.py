"""Benchmark: first load of a GGUF (conversion) vs later loads (converted cache), side by side.

    python bench/loading.py [--model smollm2] [--repeats 3]

Uses a fresh temporary cache directory, so the first load always converts.
"""

import argparse
import os
import statistics
import tempfile
import time

import mechlab


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MECHLAB_CACHE_DIR"] = cache
        start = time.perf_counter()
        first = mechlab.load_model(args.model)
        convert_s = time.perf_counter() - start
        assert not first.info.from_cache
        del first
        cached = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loaded = mechlab.load_model(args.model)
            cached.append(time.perf_counter() - start)
            assert loaded.info.from_cache
            del loaded
    median = statistics.median(cached)
    print(f"model: {args.model}")
    print(f"first load (convert GGUF + cache): {convert_s:6.2f} s")
    print(f"cached load (median of {args.repeats}):   {median:6.2f} s   {[round(c, 2) for c in cached]}")
    print(f"speed-up: {convert_s / median:.1f}×")


if __name__ == "__main__":
    main()
