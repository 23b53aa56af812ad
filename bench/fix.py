"""Benchmark: the seed's case fixed end to end, every figure measured in llama.cpp on written files.

    python bench/fix.py [--layer 14] [--strength -1] [--out DIR] [--own-type]

SmolLM2 completes occupation prompts with stereotyped pronouns. This script finds the direction from
the shipped contrastive pairs (training occupations), exports it as a llama.cpp control vector and
checks its logit changes in llama.cpp against mechlab's hook-based steering, then bakes two fixes
into GGUF files (edited tensors in Q8_0; with --own-type also in the file's own Q4_1) and measures, in
llama.cpp: the mean |logit(" she") - logit(" he")| on held-out occupations before and after, the KL on
neutral text, the baked file against mechlab's hook-ablated model, and what the fix costs where the
prompt states the gender ("The woman was tired because" against "The man ...").

- the evidence direction (difference of means of the answer pairs at --layer), projected out;
- the readout direction (the unembedding's she - he through the final norm), mean-ablated (each
  writer keeps its average component, as output biases) and calibrated on the training occupations
  so their mean gap is 0.

Needs llama-cpp-python (make install-llamacpp).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

import mechlab
from mechlab.directions import Direction
from mechlab.fix.runtime import Runtime, gap_in

TARGET_FALL, TARGET_KL, TARGET_CORRELATION = 0.8, 0.05, 0.95


def _stated_gap(model: mechlab.HookedModel, path: Path, pronouns: mechlab.PronounSet) -> float:
    """Mean gap after "The woman ..." prompts minus after "The man ..." ones, in llama.cpp."""
    with Runtime(path) as runtime:
        female, male = (gap_in(runtime, pronouns.stated(g), model) for g in ("female", "male"))
    return float(female.mean() - male.mean())


def _bake_rows(
    loaded: mechlab.LoadedModel,
    direction: Direction,
    name: str,
    out: Path,
    types: tuple[str | None, ...],
    stated_before: float,
    values: dict | None = None,
) -> None:
    pronouns = mechlab.load_pronoun_set()
    neutral = loaded.model.to_tokens(mechlab.neutral_text())[0]
    source = Path(str(loaded.info.path))
    for write_type in types:
        label = f"{name}, edited tensors {write_type or 'in their own type'}"
        start = time.perf_counter()
        baked = mechlab.bake(
            source,
            direction.vector,
            out / f"{name.split(',')[0]}-{write_type or 'own'}.gguf",
            write_type=write_type,
            values=values,
        )
        check = mechlab.check_bake(
            loaded.model,
            source,
            baked.path,
            direction.vector,
            pronouns.behaviour("held_out"),
            neutral,
            values=values,
        )
        r = check.runtime
        ok = "MET" if r.fall >= TARGET_FALL and r.kl <= TARGET_KL else "MISSED"
        print(f"\n{label} ({time.perf_counter() - start:.0f} s): {baked.summary()}")
        print(f"  {check.summary()}")
        targets = f"fall >= {TARGET_FALL:.0%}, KL <= {TARGET_KL}"
        print(f"  targets ({targets}): {ok} -- fall {r.fall:.1%}, KL {r.kl:.4f}")
        stated_after = _stated_gap(loaded.model, baked.path, pronouns)
        print(
            f"  stated gender (mean gap after 'The woman ...' minus after 'The man ...', llama.cpp): "
            f"{stated_before:.3f} before, {stated_after:.3f} after"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layer", type=int, default=14, help="where to read the direction (default 14)")
    parser.add_argument("--strength", type=float, default=-1.0, help="control vector strength in σ")
    parser.add_argument("--pairs", default="answer", help="answer, occupation or gendered")
    parser.add_argument("--out", type=Path, help="keep the written files here (default: a temporary dir)")
    parser.add_argument("--own-type", action="store_true", help="also bake in the file's own type")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = mechlab.load_model("smollm2")
    model = loaded.model
    pronouns = mechlab.load_pronoun_set()
    pairs = pronouns.pairs(args.pairs)
    direction = mechlab.directions.from_pairs(model, pairs, args.layer)
    print(direction.summary())
    neutral = model.to_tokens(mechlab.neutral_text())[0]
    sweep = mechlab.steering_sweep(
        model,
        direction,
        pronouns.behaviour("held_out"),
        neutral,
        strengths=(-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0),
    )
    print(f"mechlab (hooks): {sweep.summary()}")
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        site = mechlab.Site("resid_post", args.layer)
        vector = mechlab.control_vector(
            direction.vector,
            site,
            n_layers=model.cfg.n_layers,
            d_model=model.cfg.d_model,
            scale=args.strength,
            unit=direction.spread,
            model_hint="llama",
        )
        path = mechlab.write_control_vector(vector, out / "fix-control-vector.gguf")
        check = mechlab.check_control_vector(
            model, Path(str(loaded.info.path)), vector, pronouns.behaviour("held_out").prompts
        )
        print(f"\nControl vector {path.name} ({vector.summary()}):\n  {check.summary()}")
        types = (None, "Q8_0") if args.own_type else ("Q8_0",)
        stated = _stated_gap(model, Path(str(loaded.info.path)), pronouns)
        _bake_rows(loaded, direction, f"{args.pairs}-L{args.layer}, projection", out, types, stated)
        readout = mechlab.directions.from_readout(model, pronouns.positive, pronouns.negative)
        values = mechlab.mean_values(model, readout.vector, mechlab.neutral_text().splitlines())
        values = mechlab.calibrate(model, readout.vector, values, pronouns.behaviour("train"))
        _bake_rows(loaded, readout, "readout, mean ablation calibrated", out, types, stated, values)


if __name__ == "__main__":
    main()
