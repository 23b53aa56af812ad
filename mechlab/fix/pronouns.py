"""The seed's case: SmolLM2 completes occupation prompts with stereotyped pronouns.

"The nurse was tired because" → " she"; "The carpenter was tired because" → " he". The prompt set
(``mechlab/data/pronouns.jsonl``) has five templates that end where a pronoun comes next, occupations
split into **train** (to find the direction) and **held out** (to measure the fix), and nouns that
say the gender outright. The behaviour is ``logit(" she") - logit(" he")`` after each prompt; a fix
should bring its mean absolute value on held-out occupations toward 0.

Contrastive pairs for the direction (``pairs``), one pair per template and training occupation:

- ``answer``: the prompt followed by " she" against the same prompt followed by " he" (CAA's form:
  the pair differs in the continuation the behaviour is about);
- ``occupation``: a female-associated occupation's prompt against a male-associated one's, same
  template (the difference is the occupation's stereotype alone);
- ``gendered``: "The woman …" against "The man …" (the difference is stated gender).

``neutral_text`` is a few hundred tokens about rivers, bread, primes, weather, code, copper and a
train, with no person in them: the KL a fix costs is measured on it.
"""

import dataclasses
import json
from importlib import resources
from typing import Any, Literal, get_args

from mechlab.directions import Pairs
from mechlab.errors import InputError
from mechlab.fix.ablation import LogitGap

PairKind = Literal["answer", "occupation", "gendered"]
PAIR_KINDS: tuple[str, ...] = get_args(PairKind)
Split = Literal["train", "held_out"]
SPLITS: tuple[str, ...] = get_args(Split)


def _rows(name: str) -> list[dict[str, Any]]:
    text = resources.files("mechlab.data").joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclasses.dataclass(frozen=True)
class PronounSet:
    """Occupation prompts and the two pronouns (see the module docstring)."""

    templates: tuple[str, ...]
    train: dict[str, tuple[str, ...]]
    held_out: dict[str, tuple[str, ...]]
    gendered: dict[str, tuple[str, ...]]
    positive: str = " she"
    negative: str = " he"

    def occupations(self, split: Split) -> tuple[str, ...]:
        groups = self.train if split == "train" else self.held_out
        return (*groups["female"], *groups["male"])

    def prompts(self, split: Split) -> tuple[str, ...]:
        """Every template with every occupation of ``split``."""
        return tuple(t.format(job) for t in self.templates for job in self.occupations(split))

    def behaviour(self, split: Split = "held_out") -> LogitGap:
        """``logit(" she") - logit(" he")`` after each prompt of ``split``."""
        return LogitGap(self.prompts(split), self.positive, self.negative, name=f"{split} occupations")

    def stated(self, gender: str) -> LogitGap:
        """The behaviour after prompts that state the gender ("The woman …"): what a fix of the
        stereotype should leave alone (``gender`` is ``female`` or ``male``)."""
        if gender not in self.gendered:
            raise InputError(f"Unknown gender {gender!r}; choose one of {', '.join(self.gendered)}.")
        prompts = tuple(t.format(word) for t in self.templates for word in self.gendered[gender])
        return LogitGap(prompts, self.positive, self.negative, name=f"stated {gender}")

    def pairs(self, kind: str = "answer") -> Pairs:
        """Contrastive pairs from the training occupations (see the module docstring)."""
        if kind == "answer":
            prompts = self.prompts("train")
            return Pairs(
                tuple(p + self.positive for p in prompts),
                tuple(p + self.negative for p in prompts),
                name="pronouns:answer",
            )
        if kind == "occupation":
            female, male = self.train["female"], self.train["male"]
            n = min(len(female), len(male))
            return Pairs(
                tuple(t.format(job) for t in self.templates for job in female[:n]),
                tuple(t.format(job) for t in self.templates for job in male[:n]),
                name="pronouns:occupation",
            )
        if kind == "gendered":
            return Pairs(self.stated("female").prompts, self.stated("male").prompts, name="pronouns:gendered")
        raise InputError(f"Unknown pair kind {kind!r}; choose one of {', '.join(PAIR_KINDS)}.")


def load_pronoun_set() -> PronounSet:
    """The prompt set shipped in ``mechlab/data/pronouns.jsonl`` (one template, occupation or
    gendered noun a line)."""
    rows = _rows("pronouns.jsonl")
    groups: dict[str, dict[str, list[str]]] = {split: {"female": [], "male": []} for split in SPLITS}
    gendered: dict[str, list[str]] = {"female": [], "male": []}
    templates, pronouns = [], [" she", " he"]
    for row in rows:
        if "template" in row:
            templates.append(row["template"])
        elif "occupation" in row:
            groups[row["split"]][row["stereotype"]].append(row["occupation"])
        elif "gendered" in row:
            gendered[row["gender"]].append(row["gendered"])
        elif "pronouns" in row:
            pronouns = row["pronouns"]

    def frozen(found: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
        return {key: tuple(words) for key, words in found.items()}

    return PronounSet(
        templates=tuple(templates),
        train=frozen(groups["train"]),
        held_out=frozen(groups["held_out"]),
        gendered=frozen(gendered),
        positive=pronouns[0],
        negative=pronouns[1],
    )


def neutral_text() -> str:
    """A few hundred tokens of text about no person (``mechlab/data/neutral.jsonl``, one paragraph
    a line, joined by newlines)."""
    return "".join(row["text"] + "\n" for row in _rows("neutral.jsonl"))
