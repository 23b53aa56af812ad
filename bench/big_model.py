"""Benchmark: models in real shapes (Llama-3.2-1B, Llama-3.1-8B; random weights, Q4_K_M) in each loading mode.

For each shape and mode, fresh processes measure, side by side:
- the file's size; the first load (an empty cache: conversion, or the tokenizer for quantized mode)
  and a cached load, in seconds;
- a 32-token forward pass, Integrated Gradients at the default settings and an all-heads
  attribution-patching sweep (zero ablation), in seconds;
- the peak resident set size of the process that ran them (``ru_maxrss``, from the OS) against the
  memory plan's estimate;
- for quantized mode on the 1B shape, the mean KL of its next-token distributions against llama.cpp
  running the same file (``mechlab.verify(reference="llamacpp")``).
Then the ratio of the quantized forward pass to the half-precision one on the 1B shape. A mode whose
plan does not fit this machine is reported, not run.

Targets (issue 15, 2 cores, 24 GB): 8B Q4_K_M forward + IG + AtP with peak RSS ≤ 12 GB; 1B peak RSS
≤ 2.5 GB and mean KL ≤ 0.01 against llama.cpp; the quantized forward ≤ 2× the half-precision one (1B).

Run: ``.venv/bin/python bench/big_model.py [--shapes llama-3.2-1b llama-3.1-8b]
[--modes quantized bfloat16 float32]``.
The files are generated into mechlab's cache first (``mechlab.toy.big_gguf``; the 8B takes minutes).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time, torch, mechlab
path, mode, what, ig_batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
result = {}
start = time.perf_counter()
loaded = mechlab.load_model(path, weights=mode, check_memory=False)
result["load_s"] = time.perf_counter() - start
model = loaded.model
if what == "run":
    tokens = torch.randint(1000, 40000, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(tokens)  # first pass: pages of the file mapped in, kernels warmed
        start = time.perf_counter()
        model(tokens)
        result["forward_s"] = time.perf_counter() - start
    result["forward_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    target = mechlab.make_target(model, int(tokens[0, -1]))
    start = time.perf_counter()
    ig = mechlab.integrated_gradients(model, tokens, target, batch_size=ig_batch)
    result["ig_s"] = time.perf_counter() - start
    result["ig_completeness"] = ig.completeness_error
    start = time.perf_counter()
    mechlab.attribution_patch(model, tokens, mechlab.Ablation("zero"), "z", lambda logits: logits[:, -1, 5])
    result["atp_s"] = time.perf_counter() - start
if what == "kl":
    report = mechlab.verify(loaded=loaded, reference="llamacpp")
    result["kl"], result["top1"] = report.mean_kl, report.top1_agreement
result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(result))
"""

RATIO = """
import json, sys, time, torch, mechlab
from mechlab.models.quantized import kernels
path, repeats = sys.argv[1], int(sys.argv[2])
models = {m: mechlab.load_model(path, weights=m, check_memory=False).model for m in ("quantized", "bfloat16")}
tokens = torch.randint(1000, 40000, (1, 32), generator=torch.Generator().manual_seed(0))
runs = {
    "quantized (llama.cpp kernels)": ("quantized", "llama.cpp"),
    "quantized (float)": ("quantized", "float"),
    "bfloat16": ("bfloat16", "llama.cpp"),
}
times = {name: [] for name in runs}
with torch.no_grad():
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for name, (mode, kernel) in runs.items():
            with kernels(kernel):
                start = time.perf_counter()
                models[mode](tokens)
                times[name].append(time.perf_counter() - start)
print(json.dumps({name: sorted(t[1:])[len(t[1:]) // 2] for name, t in times.items()}))
"""
GB = 1024**3


def child(path: Path, mode: str, what: str, ig_batch: int = 16, cache: str | None = None) -> dict[str, float]:
    env = dict(os.environ, **({"MECHLAB_CACHE_DIR": cache} if cache else {}))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, what, str(ig_batch)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-5:])
        return {"error": tail}  # type: ignore[dict-item]
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["llama-3.2-1b", "llama-3.1-8b"])
    parser.add_argument("--modes", nargs="+", default=["quantized", "bfloat16", "float32"])
    parser.add_argument("--type", default="Q4_K_M")
    parser.add_argument("--ig-batch", type=int, default=16, help="IG interpolation points per pass")
    parser.add_argument(
        "--ratio",
        action="store_true",
        help="only the forward-pass ratio: quantized and bfloat16 in one process, alternating, median of 5",
    )
    args = parser.parse_args()

    import mechlab
    from mechlab.toy.big_gguf import big_gguf

    if args.ratio:
        for shape in args.shapes:
            out = subprocess.run(
                [sys.executable, "-c", RATIO, str(big_gguf(shape, args.type)), "5"],
                capture_output=True,
                text=True,
                check=True,
            )
            medians = json.loads(out.stdout.strip().splitlines()[-1])
            half = medians["bfloat16"]
            for name, seconds in medians.items():
                print(f"{shape} 32-token forward, {name}: {seconds:.3f} s ({seconds / half:.2f}x bfloat16)")
        return
    rows, forwards = [], {}
    for shape in args.shapes:
        path = big_gguf(shape, args.type)
        plan = mechlab.plan_memory(str(path), ig_batch=args.ig_batch)
        for mode in args.modes:
            estimate = plan[mode]
            if not estimate.fits:
                rows.append((shape, mode, path, {"skipped": f"plan: {estimate.peak / GB:.1f} GB"}))
                continue
            with tempfile.TemporaryDirectory(prefix="mechlab-bench-") as empty:
                first = child(path, mode, "load", cache=empty)
            measured = child(path, mode, "run", args.ig_batch)
            measured["first_load_s"] = first.get("load_s", float("nan"))
            measured["estimate"] = estimate.peak
            if mode == "quantized" and shape == "llama-3.2-1b":
                measured.update({k: v for k, v in child(path, mode, "kl").items() if k in ("kl", "top1")})
            forwards[(shape, mode)] = measured.get("forward_s")
            rows.append((shape, mode, path, measured))
            print(json.dumps({"shape": shape, "mode": mode, **measured}), flush=True)

    header = (
        "shape",
        "mode",
        "file GiB",
        "load first/cached s",
        "forward s",
        f"IG s (batch {args.ig_batch})",
        "AtP s",
        "peak RSS GiB: forward / all",
        "plan GiB",
    )
    print(" | ".join(header))
    for shape, mode, path, m in rows:
        if "skipped" in m or "error" in m:
            print(f"{shape} | {mode} | {path.stat().st_size / GB:.2f} | {m.get('skipped') or m['error']}")
            continue
        print(
            f"{shape} | {mode} | {path.stat().st_size / GB:.2f} | "
            f"{m['first_load_s']:.1f} / {m['load_s']:.1f} | "
            f"{m['forward_s']:.2f} | {m['ig_s']:.1f} | {m['atp_s']:.1f} | "
            f"{m['forward_rss'] / GB:.2f} / {m['peak_rss'] / GB:.2f} | "
            f"{m['estimate'] / GB:.2f}" + (f" | KL vs llama.cpp {m['kl']:.4f}" if "kl" in m else "")
        )
    for shape in args.shapes:
        quantized, half = forwards.get((shape, "quantized")), forwards.get((shape, "bfloat16"))
        if quantized and half:
            print(f"{shape}: quantized forward / bfloat16 forward = {quantized / half:.2f}")


if __name__ == "__main__":
    main()
