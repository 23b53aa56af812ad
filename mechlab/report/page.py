"""The ``mechlab explain`` report: one offline HTML page assembled from an ``Explanation``.

Sections, in reading order: how to read the page; what the model saw and said; the token being
explained; which prompt tokens pushed it (Integrated Gradients); when the answer formed (logit
lens); which components wrote it (direct logit attribution); which heads matter (attribution
patching, checked by knocking the heads out); where those heads look (attention); which known
circuits they belong to (detectors); with ``--sae``, which dictionary latents are active and
their feature pages (``mechlab.report.latents``); fidelity; the reproducibility manifest. Each
method's own ``add_to`` renders its section, so the report shows exactly what the notebooks show.
"""

import json
from typing import Any

from mechlab.render.html import escape
from mechlab.render.page import Page
from mechlab.render.tokens import visible
from mechlab.report.latents import add_sae_sections

HOW_TO_READ = (
    "Each section answers one question about the explained token, always measured on the same "
    "number: the logit difference between the token the model chose and the runner-up it nearly "
    "said instead. Positive values push towards the chosen token, negative values towards the "
    "runner-up. Integrated Gradients credits prompt tokens; the logit lens shows from which layer "
    "the residual stream already prefers the chosen token; direct logit attribution splits the "
    "logit difference into the parts each layer and head write directly; attribution patching "
    "estimates what knocking out each head would change, and the heads it ranks highest are then "
    "knocked out for real. The attention views show where those heads look, and the detectors say "
    "whether they are known circuit parts (induction, previous-token, …). All evidence is "
    "correlational except the knock-outs."
)


def _prompt_section(page: Page, ex: Any) -> None:
    completion = ex.completion
    n_prompt = int(completion.prompt_tokens.shape[1])
    how = "with the model's chat template applied" if completion.chat else "as given (no chat template)"
    section = page.section("What the model saw and said", f"The exact text fed to the model, {how}:")
    section.html(f'<pre class="prompt">{escape(completion.model_text)}</pre>')
    section.text(f"{n_prompt} prompt tokens. The model continued with:")
    section.html(f'<pre class="completion">{escape(completion.text)}</pre>')
    rows = []
    for i, step in enumerate(completion.steps):
        marker = "◀ explained" if i == ex.settings.step else ""
        alternatives = ", ".join(f"{visible(a.text)!r} {a.prob:.3f}" for a in step.alternatives)
        rows.append((i, repr(visible(step.text)), f"{step.prob:.3f}", alternatives, marker))
    section.table(["#", "token", "p", "top alternatives (p)", ""], rows, caption="Generated tokens")
    sampling = (
        "greedy decoding"
        if completion.temperature == 0
        else f"sampling at temperature {completion.temperature} with seed {completion.seed}"
    )
    section.text(f"Decoding: {sampling}.", note=True)


def token_choice_note(target: str | None, contrast: str | None) -> str:
    """Who picked the explained token and its contrast: the user (``--target``/``--contrast``) or
    the model (the generated token; the most likely other token)."""
    if target is not None and contrast is not None:
        return "Both tokens were chosen by the user (--target and --contrast)."
    if target is not None:
        return (
            "The explained token was chosen by the user (--target); the contrast is the token the model "
            "found most likely apart from it."
        )
    if contrast is not None:
        return (
            "The contrast token was chosen by the user (--contrast); the explained token is the one the "
            "model generated."
        )
    return (
        "Both tokens come from the model: the token it generated and the runner-up, the token it found "
        "most likely apart from that one."
    )


def _target_section(page: Page, ex: Any) -> None:
    chosen, contrast = ex.target_names
    verb = "weighed" if ex.settings.target is not None else "chose"
    section = page.section(
        "The token explained",
        f"At generated token {ex.settings.step} the model {verb} {chosen} (p = {ex.chosen_prob:.3f}) "
        f"against {contrast} (p = {ex.contrast_prob:.3f}). Everything below explains the logit difference "
        f"logit({chosen}) − logit({contrast}) = {ex.dla.value:+.3f} at the last position of the context "
        f"({int(ex.context.shape[1])} tokens).",
    )
    section.text(token_choice_note(ex.settings.target, ex.settings.contrast), note=True)


def _heads_section(page: Page, ex: Any) -> None:
    section = page.section(
        "Which heads matter",
        "Attribution patching (two forward passes, one backward pass) estimates for every head how much the "
        "logit difference would change if the head's output were zero-ablated. The heads ranked highest by "
        "that estimate or by their direct effect were then knocked out for real, one at a time; the table "
        "keeps those with the largest actual effect. Effects are the drop in the logit difference when the "
        "head is knocked out: a positive effect means the head supports the chosen token, a negative one "
        "that it supports the runner-up.",
    )
    rows = [
        (
            h.label,
            f"{h.ablation:+.3f}",
            f"{h.atp:+.3f}",
            f"{h.dla:+.3f}",
            ", ".join(f"{name} {score:.2f}" for name, score in h.detectors) or "-",
        )
        for h in ex.heads
    ]
    section.table(
        ["head", "knock-out effect", "AtP estimate", "direct effect", "detector hits"],
        rows,
        caption="Heads that matter most for the explained token",
    )
    section.figure(
        ex.atp.plot(
            effect=True,
            title="Attribution-patching estimate of each head's knock-out effect",
            label="drop in logit({}) − logit({})".format(*ex.target_names),
        ),
        alt="attribution patching estimates per head",
    )


def _detectors_section(page: Page, ex: Any) -> None:
    section = page.section("Known circuits in this model")
    if ex.detectors is None:
        reason = ex.detector_error or "no detectors were requested"
        section.text(f"Detectors were not run: {reason}.", note=True)
        return
    section.text(
        "Detectors score every head on random repeated sequences (BOS, r, r); a head is a hit when its "
        "95% interval lies clearly above the chance level and its positional control. Top heads per detector:"
    )
    rows = []
    for name, result in ex.detectors.items():
        for score in result.top(3):
            rows.append(
                (
                    name,
                    f"L{score.layer}H{score.head}",
                    f"{score.score:.2f}",
                    f"[{score.low:.2f}, {score.high:.2f}]",
                    score.verdict,
                )
            )
    section.table(["detector", "head", "score", "95% interval", "verdict"], rows)
    for name, reason in ex.detectors.failures.items():
        section.text(f"Detector {name} failed: {reason}", note=True)


def _fidelity_section(page: Page, ex: Any) -> None:
    section = page.section("Fidelity")
    if ex.verification is None:
        section.text(
            "Not checked in this run (use --verify): `mechlab verify SOURCE` compares the hooked model "
            "with an independent transformers reference loaded from the same file.",
            note=True,
        )
        return
    section.text(ex.verification.summary())


def _manifest_section(page: Page, ex: Any) -> None:
    section = page.section("Reproducibility manifest")
    model = ex.manifest["model"]
    rows = [(key, json.dumps(value) if isinstance(value, dict) else value) for key, value in model.items()]
    rows += [(name, version) for name, version in ex.manifest["versions"].items()]
    rows += [("created", ex.manifest["created"]), ("platform", ex.manifest["platform"])]
    rows += [(f"time: {stage}", f"{seconds:.2f} s") for stage, seconds in ex.manifest["timings_s"].items()]
    section.table(["field", "value"], rows)
    text = json.dumps(ex.manifest, indent=2, default=str, ensure_ascii=False)
    section.html(f'<pre class="manifest">{escape(text)}</pre>')


def report_page(ex: Any, *, id_prefix: str | None = None) -> Page:
    """The full report page of an ``Explanation``."""
    chosen, contrast = ex.target_names
    source = ex.manifest["model"].get("source", "the model")
    page = Page(
        f"Why did {source} say {chosen}?",
        subtitle=f"{chosen} rather than {contrast} · mechlab explain · {ex.manifest['created']}",
        id_prefix=id_prefix,
    )
    page.section("How to read this report", HOW_TO_READ)
    _prompt_section(page, ex)
    _target_section(page, ex)
    ex.ig.add_to(page, title="Which prompt tokens pushed it (Integrated Gradients)")
    ex.lens.add_to(page, title="When the answer formed (logit lens)")
    ex.dla.add_to(page, title="Which components wrote it (direct logit attribution)")
    _heads_section(page, ex)
    ex.attention.add_to(page, title="Where those heads look", static=True)
    _detectors_section(page, ex)
    if ex.saes:
        add_sae_sections(page, ex.saes)
    if ex.fix is not None:
        from mechlab.report.fix import add_fix_section

        add_fix_section(page, ex.fix)
    _fidelity_section(page, ex)
    _manifest_section(page, ex)
    return page
