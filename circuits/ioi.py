"""Indirect object identification (IOI): find the heads that carry the answer, on your own model.

In "When Mary and John went to the store, John gave a drink to", the answer is the *indirect
object* (IO) " Mary", not the repeated *subject* (S) " John". Wang et al. (2022) traced GPT-2
small's circuit for this: *name mover* heads at the last position (END) copy the IO name to the
output, *S-inhibition* heads steer their queries away from S, earlier *duplicate-token* and
*induction* heads notice that S repeats, and *negative name movers* push the other way.

This script repeats the discovery on any model mechlab loads:

1. A dataset from the templates and word lists below. The corrupted prompt fills the second
   subject slot ``{S2}`` with a third name C instead of S ("ABC" corruption), which removes the
   repetition the circuit keys on. Only single-token names and words are used, and only pairs whose
   clean and corrupted prompts align position by position are kept (the script says when fewer
   than asked for remain). The mean logit difference logit(IO) − logit(S) is reported for every
   template.
2. Residual-stream patching by layer × position (denoising): where the IO/S information lives.
3. Activation patching of every head's output (denoising).
4. Path patching (noising, Wang et al.) from every head to the logits at END: direct effects,
   which separate name movers (positive) from negative name movers.
5. Path patching from every head to the queries of the name movers at END: S-inhibition heads.
6. Attention from END of the heads found: name movers should attend to IO.

Outputs in ``--out``: PNG heatmaps of each sweep, ``attention.png``, and ``summary.json`` (the
dataset, the baselines, and each head found with its role and scores).

    python -m circuits.ioi --model smollm2 --out out/ioi
"""

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

import mechlab

# {S2} is the second mention of the subject: S in the clean prompt, a third name in the corrupted one.
TEMPLATES = [
    "When {IO} and {S} went to the {place}, {S2} gave a {object} to",
    "When {S} and {IO} went to the {place}, {S2} gave a {object} to",
    "After {IO} and {S} went to the {place}, {S2} gave a {object} to",
    "Then, {IO} and {S} had a long day at the {place}. {S2} gave a {object} to",
    "While {IO} and {S} were working at the {place}, {S2} gave a {object} to",
]
NAMES = [
    "Mary", "John", "Tom", "James", "David", "Sarah", "Michael", "Anna", "Paul", "Lisa", "Mark",
    "Emma", "Kevin", "Laura", "Daniel", "Kate", "Peter", "Jessica", "Alice", "Bob", "Rachel",
    "Brian", "Emily", "Jason", "Amy", "Eric", "Helen", "George", "Susan", "Robert", "Lucy", "Adam",
]  # fmt: skip
PLACES = ["store", "park", "school", "beach", "restaurant", "hospital", "office", "garden", "station"]
OBJECTS = ["drink", "book", "ball", "ring", "letter", "gift", "pen", "key", "bottle", "bag", "flower"]
ROLE_THRESHOLD = 0.05  # a head must carry ≥ 5% of the logit difference to be named


def single_token(model: Any, word: str) -> bool:
    return len(model.to_tokens(" " + word)[0]) == 1


def make_dataset(model: Any, template: str, n: int, seed: int) -> dict[str, Any]:
    """Up to ``n`` clean/corrupted prompt pairs of one template, all of one token length.

    Raises:
        mechlab.InputError: no pair could be made (too few single-token names, or a template whose
            clean and corrupted prompts never align).
    """
    rng = random.Random(seed)
    names = [w for w in NAMES if single_token(model, w)]
    places = [w for w in PLACES if single_token(model, w)]
    objects = [w for w in OBJECTS if single_token(model, w)]
    pairs: list[tuple[str, str, str, str]] = []
    length = None
    for _ in range(50 * n if len(names) >= 3 and places and objects else 0):
        io, s, c = rng.sample(names, 3)
        fill = {"place": rng.choice(places), "object": rng.choice(objects), "IO": io, "S": s}
        clean, corrupted = template.format(S2=s, **fill), template.format(S2=c, **fill)
        tokens = (model.to_tokens(clean), model.to_tokens(corrupted))
        if tokens[0].shape != tokens[1].shape or (length is not None and tokens[0].shape[1] != length):
            continue
        length = tokens[0].shape[1]
        pairs.append((clean, corrupted, io, s))
        if len(pairs) == n:
            break
    if not pairs:
        raise mechlab.InputError(
            f"No IOI prompt pairs for template {template!r}: {len(names)} of {len(NAMES)} names, "
            f"{len(places)} places and {len(objects)} objects are single tokens for this model, and "
            "a pair needs 3 names and clean/corrupted prompts of one length. Add single-token words "
            "to NAMES/PLACES/OBJECTS."
        )
    clean_tokens = torch.cat([model.to_tokens(p[0]) for p in pairs])
    return {
        "template": template,
        "prompts": [p[0] for p in pairs],
        "corrupted_prompts": [p[1] for p in pairs],
        "clean": clean_tokens,
        "corrupted": torch.cat([model.to_tokens(p[1]) for p in pairs]),
        "io": torch.tensor([model.to_single_token(" " + p[2]) for p in pairs]),
        "s": torch.tensor([model.to_single_token(" " + p[3]) for p in pairs]),
    }


def positions(data: dict[str, Any]) -> dict[str, int]:
    """Where IO, S1, S2 and END sit (the same in every prompt of a template)."""
    row = data["clean"][0]
    io = int((row == data["io"][0]).nonzero()[0])
    s_positions = (row == data["s"][0]).nonzero().flatten().tolist()
    return {"IO": io, "S1": int(s_positions[0]), "S2": int(s_positions[-1]), "END": len(row) - 1}


def template_baselines(model: Any, n: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for template in TEMPLATES:
        data = make_dataset(model, template, n, seed)
        metric = mechlab.LogitDiff(data["io"], data["s"])
        with torch.no_grad():
            clean, corrupted = metric(model(data["clean"])), metric(model(data["corrupted"]))
        rows.append(
            {
                "template": template,
                "n": len(data["prompts"]),
                "clean_logit_diff": float(clean.mean()),
                "corrupted_logit_diff": float(corrupted.mean()),
                "clean_accuracy": float((clean > 0).float().mean()),
            }
        )
    return rows


def head_name(site: mechlab.Site) -> str:
    return f"{site.layer}.{site.head}"


def attention_from_end(
    model: Any, data: dict[str, Any], heads: list[mechlab.Site]
) -> dict[str, dict[str, float]]:
    where = positions(data)
    sites = [mechlab.Site("pattern", h.layer, h.head, pos=where["END"]) for h in heads]
    acts = mechlab.capture(model, data["clean"], sites, logits=False)
    return {
        head_name(h): {k: float(acts[s][:, where[k]].mean()) for k in ("IO", "S1", "S2")}
        for h, s in zip(heads, sites, strict=True)
    }


def refine(info: dict[str, Any]) -> None:
    """Name direct-effect heads by where they look from END: IO (name movers) or S (suppressors)."""
    attention = info.get("attention_from_end", {})
    if not attention:
        return
    to_io, to_s = attention["IO"], attention["S1"] + attention["S2"]
    looks = "IO" if to_io >= max(to_s, 0.2) else "S" if to_s >= 0.2 else None
    names = {
        ("direct positive", "IO"): "name mover (attends IO, copies it to the logits)",
        ("direct positive", "S"): "S suppressor (attends S, writes against it)",
        ("direct negative", "IO"): "negative name mover (attends IO, writes against it)",
        ("direct negative", "S"): "S booster (attends S, copies it)",
    }
    info["roles"] = [
        names.get((role.split(" (")[0], looks), role) if looks else role for role in info["roles"]
    ]


def attention_figure(attention: dict[str, dict[str, float]]) -> Figure:
    series = {key: {head: values[key] for head, values in attention.items()} for key in ("IO", "S1", "S2")}
    return mechlab.figures.bars(
        series,
        title="Where the heads found look from the last position",
        ylabel="attention from END",
        rotation=45,
    )


def significant(result: mechlab.PatchResult | None, sign: int = 1) -> list[mechlab.Site]:
    """Heads carrying at least ROLE_THRESHOLD of the effect (with the given sign), strongest first."""
    if result is None:
        return []
    return [e.sites[0] for e in result.top(20) if sign * e.effect >= ROLE_THRESHOLD]


RULES = [
    ("path_to_logits", 1, "direct positive (raises logit(IO) − logit(S) at END)"),
    ("path_to_logits", -1, "direct negative (lowers logit(IO) − logit(S) at END)"),
    ("path_to_mover_queries", 1, "S-inhibition (steers the name movers' queries at END)"),
    ("path_to_s_inhibition_values", 1, "induction / duplicate token (feeds S-inhibition values at S2)"),
    ("head_patching", 1, "other (matters, through paths not traced here)"),
]


def assign_roles(sweeps: dict[str, mechlab.PatchResult]) -> dict[str, dict[str, Any]]:
    """Name each significant head's role(s) from the path-patching sweeps, with its scores."""
    found: dict[str, dict[str, Any]] = {}
    for sweep, sign, role in RULES:
        for site in significant(sweeps.get(sweep), sign):
            info = found.setdefault(head_name(site), {"roles": []})
            if not info["roles"] or not role.startswith("other"):
                info["roles"].append(role)
    for name, info in found.items():
        site = mechlab.Site("z", *(int(x) for x in name.split(".")))
        for sweep, result in sweeps.items():
            try:
                info[sweep] = round(result.entry(site).effect, 4)
            except KeyError:  # the sweep did not cover this head
                continue
    return found


def below(sites: list[mechlab.Site]) -> mechlab.Sweep | None:
    """Every head in the layers before the first of ``sites`` (``None`` if that is layer 0)."""
    first = min(int(s.layer or 0) for s in sites)
    return mechlab.Sweep("z", layers=range(first)) if first > 0 else None


def discover(model: Any, data: dict[str, Any], out: Path) -> dict[str, mechlab.PatchResult]:
    """Run the sweeps (each plotted to ``out``), each path step starting from the heads found before."""
    where = positions(data)
    metric = mechlab.LogitDiff(data["io"], data["s"])
    clean, corrupted = data["clean"], data["corrupted"]
    sweeps: dict[str, mechlab.PatchResult] = {}

    def step(name: str, result: mechlab.PatchResult) -> list[mechlab.Site]:
        sweeps[name] = result
        result.plot().savefig(out / f"{name}.png", dpi=110)
        print(f"{result.summary()}\n  top: " + ", ".join(f"{e.label} {e.effect:+.2f}" for e in result.top(6)))
        return significant(result, 1)

    step(
        "resid_pre_by_position",
        mechlab.patch(model, clean, corrupted, mechlab.Sweep("resid_pre", per_position=True), metric),
    )
    step("head_patching", mechlab.patch(model, clean, corrupted, "z", metric))
    step("path_to_logits", mechlab.path_patch(model, clean, corrupted, "z", "logits", metric))
    movers = significant(sweeps["path_to_logits"], 1) + significant(sweeps["path_to_logits"], -1)
    if not movers:
        return sweeps
    queries = [mechlab.Site("q", m.layer, m.head, pos=where["END"]) for m in movers]
    senders = below(movers)
    if senders is None:
        return sweeps
    inhibitors = step(
        "path_to_mover_queries", mechlab.path_patch(model, clean, corrupted, senders, queries, metric)
    )
    senders = below(inhibitors) if inhibitors else None
    if senders is not None:
        values = [
            mechlab.Site("v", s.layer, mechlab.kv_head(model.cfg, int(s.head or 0)), pos=where["S2"])
            for s in inhibitors
        ]
        result = mechlab.path_patch(model, clean, corrupted, senders, list(dict.fromkeys(values)), metric)
        step("path_to_s_inhibition_values", result)
    return sweeps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="model source (default: smollm2)")
    parser.add_argument("--out", type=Path, default=Path("out/ioi"), help="report folder")
    parser.add_argument("--prompts", type=int, default=8, help="prompt pairs in the analysed batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model = mechlab.load_model(args.model, device=args.device).model
    args.out.mkdir(parents=True, exist_ok=True)

    baselines = template_baselines(model, args.prompts, args.seed)
    for row in baselines:
        diffs = f"{row['clean_logit_diff']:6.2f} clean, {row['corrupted_logit_diff']:6.2f} corrupted"
        print(f"{diffs}: {row['template']}")
    data = make_dataset(model, TEMPLATES[0], args.prompts, args.seed)
    n, length = data["clean"].shape
    fewer = f" (of {args.prompts} asked for: no more aligned pairs)" if n < args.prompts else ""
    print(f"Analysing {n} prompts{fewer} of {length} tokens; positions {positions(data)}")
    sweeps = discover(model, data, args.out)
    found = assign_roles(sweeps)
    sites = [mechlab.Site("z", *map(int, name.split("."))) for name in found]
    attention = attention_from_end(model, data, sites) if sites else {}
    if attention:
        attention_figure(attention).savefig(args.out / "attention.png", dpi=110)
    for name, info in found.items():
        info["attention_from_end"] = {k: round(v, 4) for k, v in attention.get(name, {}).items()}
        refine(info)
        print(f"  {name:>6}: {'; '.join(info['roles'])}; attention from END {info['attention_from_end']}")
    heads = sweeps["head_patching"]
    summary = {
        "model": args.model,
        "dataset": {k: data[k] for k in ("template", "prompts", "corrupted_prompts")},
        "prompts_requested": args.prompts,
        "positions": positions(data),
        "templates": baselines,
        "clean_logit_diff": heads.clean_mean,
        "corrupted_logit_diff": heads.corrupted_mean,
        "role_threshold": ROLE_THRESHOLD,
        "heads": found,
        "sweeps": {name: result.summary() for name, result in sweeps.items()},
        "top_head_patching": [{"head": e.label, "effect": round(e.effect, 4)} for e in heads.top(10)],
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    n_plots = len(sweeps) + bool(attention)
    print(f"Wrote {args.out}/summary.json and {n_plots} plots in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
