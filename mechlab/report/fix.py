"""The explain report's fix section (``mechlab explain ... --fix``): the explained preference taken out.

The fix is the one ``bench/fix.py`` measures in llama.cpp: the direction the explained logit
difference is read through (``mechlab.directions.from_readout``: the unembedding rows of the chosen
and contrast tokens through the final norm's scale), mean-ablated at every residual-stream writer
(``mechlab.fix.ablation``), so each block keeps reading its average along it. For the pronoun case
(" she" against " he") the last writer's constant is calibrated on the training occupations and the
held-out ones are measured; for any other pair the mean is left as it is. The section gives the
explained logit difference before and after, the KL on neutral text, and the command that writes the
fix into a GGUF file llama.cpp and Ollama run.
"""

import dataclasses
from typing import Any

from mechlab.directions import from_readout
from mechlab.fix.ablation import ablation_hooks, calibrate, mean_kl, mean_values, next_token_log_probs
from mechlab.fix.pronouns import load_pronoun_set, neutral_text
from mechlab.render.page import Page
from mechlab.tokens import as_tokens, single_token
from mechlab.types import HookedModel


@dataclasses.dataclass(frozen=True)
class FixFinding:
    """The explained preference with the readout direction mean-ablated (see the module doc).

    Attributes:
        chosen, contrast: the two tokens.
        before, after: the explained logit difference, clean and fixed.
        kl: mean KL on the neutral text, clean ‖ fixed (nats per token); ``n_neutral`` its tokens.
        calibrated: whether the pronoun case calibrated the last constant.
        held_out: for the pronoun case, mean |gap| on held-out occupations, clean and fixed.
        command: the ``mechlab bake`` command that writes the fix.
    """

    chosen: str
    contrast: str
    before: float
    after: float
    kl: float
    n_neutral: int
    calibrated: bool
    held_out: tuple[float, float] | None
    command: str

    def summary(self) -> str:
        text = (
            f"With the {self.chosen!r} − {self.contrast!r} readout direction mean-ablated"
            f"{' and calibrated on the training occupations' if self.calibrated else ''}, the explained "
            f"logit difference goes from {self.before:+.3f} to {self.after:+.3f}, at a KL of {self.kl:.4f} "
            f"nats per token on {self.n_neutral} neutral tokens."
        )
        if self.held_out is not None:
            before, after = self.held_out
            text += (
                f" On the held-out occupations the mean |gap| goes from {before:.3f} to {after:.3f} "
                f"({1 - after / before:+.1%} fall)."
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fix_finding(model: HookedModel, context: Any, chosen: str, contrast: str, source: str) -> FixFinding:
    """The fix measured with hooks on the explained ``context`` (token ids or text) and neutral text."""
    direction = from_readout(model, chosen, contrast).vector
    values = mean_values(model, direction, neutral_text().splitlines())
    pronouns = load_pronoun_set()
    pronoun_case = (chosen, contrast) == (pronouns.positive, pronouns.negative)
    if pronoun_case:
        values = calibrate(model, direction, values, pronouns.behaviour("train"))
    hooks = ablation_hooks(model, direction, values=values)
    tokens = as_tokens(model, context)
    a, b = single_token(model, chosen), single_token(model, contrast)
    clean, fixed = (next_token_log_probs(model, tokens[0], h)[-1] for h in (None, hooks))
    neutral = as_tokens(model, neutral_text())[0]
    held_out = None
    if pronoun_case:
        behaviour = pronouns.behaviour("held_out")
        gaps = (behaviour.measure(model), behaviour.measure(model, hooks))
        held_out = (float(gaps[0].abs().mean()), float(gaps[1].abs().mean()))
    flags = " --calibrate" if pronoun_case else ""
    return FixFinding(
        chosen=chosen,
        contrast=contrast,
        before=float(clean[a] - clean[b]),
        after=float(fixed[a] - fixed[b]),
        kl=mean_kl(next_token_log_probs(model, neutral), next_token_log_probs(model, neutral, hooks)),
        n_neutral=int(neutral.numel()),
        calibrated=pronoun_case,
        held_out=held_out,
        command=(
            f"mechlab bake {source} --readout {chosen!r} {contrast!r} --mean{flags} --type Q8_0 "
            "--out fixed.gguf --verify"
        ),
    )


def add_fix_section(page: Page, finding: FixFinding) -> Page:
    section = page.section(
        "A fix the runtime runs",
        "The direction the explained logit difference is read through, mean-ablated at every "
        "residual-stream writer: each block keeps reading its average along it, and nothing reaches "
        "the output along it but that average. It removes the preference wherever it appears, also "
        "where the prompt states what it asks for; the KL says what it costs on text about something "
        "else.",
    )
    section.text(finding.summary())
    section.text(
        f"Written into a GGUF file llama.cpp and Ollama run (the edited tensors in Q8_0, the means as "
        f"output biases), and measured in llama.cpp: {finding.command}",
        note=True,
    )
    return page
