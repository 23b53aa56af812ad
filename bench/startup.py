"""Benchmark: how fast mechlab answers before any model runs — help, refusals of bad files, warm loads.

Each CLI figure is the median wall time of a fresh ``mechlab`` process (so it includes every import
it needs), side by side in one run:

- ``mechlab --help`` (target ≤ 1 s: building the parser imports neither torch nor transformers);
- ``mechlab info`` refusing hostile inputs (target ≤ 2 s each): a GGUF whose metadata array claims
  2^40 elements, a symlink loop, a file that is not GGUF, a truncated GGUF;
- ``load_model("smollm2")`` from the converted cache in a process that already loaded it once
  (target ≤ 1.5 s), and the first load of a fresh process after its imports, for scale.

Run: ``.venv/bin/python bench/startup.py [--repeats 3]``. Exits non-zero when a target is missed.
"""

import argparse
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MECHLAB = [sys.executable, "-m", "mechlab"]
HELP_TARGET, REFUSE_TARGET, WARM_LOAD_TARGET = 1.0, 2.0, 1.5


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def hostile_files(folder: Path) -> dict[str, Path]:
    """Files that must be refused, written into ``folder``."""
    arch = _string(b"general.architecture") + struct.pack("<I", 8) + _string(b"llama")
    huge = _string(b"tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 4, 2**40)
    files = {
        "metadata array of 2^40 elements": (b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + arch + huge),
        "not a GGUF file": b"just some text, not a model",
        "truncated GGUF": b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + arch[:-3],
    }
    paths = {}
    for name, data in files.items():
        path = folder / f"{len(paths)}.gguf"
        path.write_bytes(data + b"\0" * 4096 * (name.startswith("metadata")))
        paths[name] = path
    (folder / "loop-b.gguf").symlink_to(folder / "loop-a.gguf")
    (folder / "loop-a.gguf").symlink_to(folder / "loop-b.gguf")
    paths["symlink loop"] = folder / "loop-a.gguf"
    return paths


def timed_cli(args: list[str], repeats: int) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        code = subprocess.run([*MECHLAB, *args], capture_output=True, check=False).returncode
        times.append(time.perf_counter() - started)
    return statistics.median(times), code


def check(label: str, seconds: float, target: float) -> list[str]:
    met = seconds <= target
    print(f"  {label:50s} {seconds:6.2f} s   target ≤ {target} s: {'met' if met else 'MISSED'}")
    return [] if met else [label]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    missed: list[str] = []
    print("fresh processes (median of", args.repeats, "each):")
    seconds, _ = timed_cli(["--help"], args.repeats)
    missed += check("mechlab --help", seconds, HELP_TARGET)
    with tempfile.TemporaryDirectory() as folder:
        for name, path in hostile_files(Path(folder)).items():
            seconds, code = timed_cli(["info", str(path)], args.repeats)
            missed += check(f"refuse: {name} (exit {code})", seconds, REFUSE_TARGET)
            if code != 2:
                missed.append(f"{name}: exit {code}, expected 2 (a MechlabError)")
    started = time.perf_counter()
    import mechlab

    mechlab.load_model("smollm2")
    first = time.perf_counter() - started
    warm = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        mechlab.load_model("smollm2")
        warm.append(time.perf_counter() - started)
    print("in this process:")
    print(f"  {'first load_model (imports included)':50s} {first:6.2f} s")
    missed += check("warm load_model (converted cache)", statistics.median(warm), WARM_LOAD_TARGET)
    if missed:
        print("missed:", "; ".join(missed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
