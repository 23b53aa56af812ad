"""Benchmark: mechlab's activation patching against TransformerLens's own, and AtP against both.

On SmolLM2 with a 20-token IOI pair (clean: "... Friday, John gave a bottle of milk to" → " Mary";
corrupted: the second " John" replaced by " Tom"; metric: logit(" Mary") − logit(" John") at the
last position), in the same process:

1. ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` over all 270 heads (plus the
   clean ``run_with_cache`` it needs) versus ``mechlab.patch(..., "z", ...)`` (which runs both
   baselines itself); checks that they agree to max |Δ| ≤ 1e-4 and prints the time ratio
   (target ≤ 0.25) and the mode it ran in (``prefix`` expected: a GGUF model keeps a key/value cache).
2. ``mechlab.attribution_patch`` for all heads versus activation patching: time ratio and Pearson r
   (target r ≥ 0.9), plus AtP's agreement for every other component kind.

Exits non-zero when a target is missed.

Run: ``.venv/bin/python bench/patching.py`` (``--threads N`` to pin torch's thread count; on a
shared CPU, 1 thread gives the most stable timings).
"""

import argparse
import os
import statistics
import time
from typing import Any

import torch

import mechlab

CLEAN = "When Mary and John went to the store after work on Friday, John gave a bottle of milk to"
CORRUPTED = "When Mary and John went to the store after work on Friday, Tom gave a bottle of milk to"
MAX_RATIO, MAX_DIFF, MIN_ATP_R = 0.25, 1e-4, 0.9  # the targets: time ratio, agreement, AtP r
KINDS = ["z", "attn_out", "v", "q", "k", "mlp_out", "resid_pre", "resid_mid"]


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def tl_head_patching(model, clean_tokens, corrupted_tokens, metric):  # type: ignore[no-untyped-def]
    from transformer_lens import patching

    names = [mechlab.Site("z", layer).hook_name for layer in range(model.cfg.n_layers)]
    _, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)
    return patching.get_act_patch_attn_head_out_all_pos(
        model, corrupted_tokens, clean_cache, lambda logits: metric(logits).mean()
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-kinds", action="store_true", help="only head outputs, no per-kind AtP table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = mechlab.load_model("smollm2").model
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    assert clean.shape == corrupted.shape == (1, 20), (clean.shape, corrupted.shape)
    metric = mechlab.LogitDiff(model.to_single_token(" Mary"), model.to_single_token(" John"))
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {load:.1f}")
    print(f"IOI pair, {clean.shape[1]} tokens; metric {metric}")

    with torch.no_grad():
        mechlab.patch(model, clean, corrupted, mechlab.Sweep("z", layers=(29,)), metric)  # warm-up
        _ours_before, t_before = timed(lambda: mechlab.patch(model, clean, corrupted, "z", metric))
        theirs, t_tl = timed(lambda: tl_head_patching(model, clean, corrupted, metric))
        ours, t_after = timed(lambda: mechlab.patch(model, clean, corrupted, "z", metric))
    t_ours = statistics.mean([t_before, t_after])
    max_diff = float((theirs - ours.values).abs().max())
    ratio = t_ours / t_tl
    print("\n== Activation patching, all 270 head outputs (hook_z, all positions) ==")
    print(f"transformer_lens.patching   {t_tl:7.2f} s")
    runs = f"runs: {t_before:.2f} s, {t_after:.2f} s; {ours.mode} mode"
    print(f"mechlab.patch               {t_ours:7.2f} s  ({runs})")
    prefix = ours.mode == "prefix"
    print(f"mode                        {ours.mode}   expected prefix: {'met' if prefix else 'MISSED'}")
    missed = [] if prefix else ["prefix mode"]
    missed += check("ratio mechlab / TL", f"{ratio:7.3f}", ratio, "≤", MAX_RATIO)
    missed += check("max |Δ| vs TL", f"{max_diff:.2e}", max_diff, "≤", MAX_DIFF)
    print(f"baselines: clean {ours.clean_mean:.4f}, corrupted {ours.corrupted_mean:.4f}")
    print("top heads (normalized effect): " + ", ".join(f"{e.label} {e.effect:.2f}" for e in ours.top(6)))

    atp, t_atp = timed(lambda: mechlab.attribution_patch(model, clean, corrupted, "z", metric))
    r = mechlab.agreement(atp, ours)["z"]
    print("\n== Attribution patching (AtP), all head outputs ==")
    print(f"AtP {t_atp:.2f} s; activation patching {t_ours:.2f} s; ratio {t_atp / t_ours:.3f}")
    missed += check("Pearson r (head outputs)", f"{r:7.3f}", r, "≥", MIN_ATP_R)
    if not args.skip_kinds:
        per_kind_table(model, clean, corrupted, metric)
    if missed:
        raise SystemExit(f"targets missed: {', '.join(missed)}")


def check(name: str, shown: str, value: float, relation: str, target: float) -> list[str]:
    """Print one measured value against its target; ``[name]`` if the target is missed."""
    ok = value <= target if relation == "≤" else value >= target
    print(f"{name:<27} {shown}   target {relation} {target:g}: {'met' if ok else 'MISSED'}")
    return [] if ok else [name]


def per_kind_table(model: Any, clean: Any, corrupted: Any, metric: Any) -> None:
    print("\n== AtP agreement with activation patching per component kind ==")
    for kind in KINDS:
        sweep = mechlab.Sweep(kind, per_position=kind.startswith("resid"))
        act = mechlab.patch(model, clean, corrupted, sweep, metric)
        est = mechlab.attribution_patch(model, clean, corrupted, sweep, metric)
        agree = mechlab.agreement(est, act)
        print(
            f"{kind:<10} cells {agree.rows[0][1]:4d}  r = {agree[kind]:6.3f}   (patching {act.seconds:.1f} s)"
        )


if __name__ == "__main__":
    main()
