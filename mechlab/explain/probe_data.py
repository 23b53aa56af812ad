"""Labelled text for probing: ``ProbeDataset`` and the datasets mechlab ships.

A probing dataset is a list of texts, one label per text, and optionally the *word* each text is
about (the adjective of a review, the subject noun of a sentence). The word serves twice: as a
probe position (``position="word"`` reads the activation at its last token) and as the unit of the
control task (Hewitt & Liang 2019), which gives every word *type* a random label.

Files are CSV (with a header) or JSON Lines, with fields ``text``, ``label`` and optionally
``word``. Two datasets ship with mechlab (built by ``mechlab/data/make_probe_data.py``):
``sentiment`` (720 templated one-sentence reviews, 60 adjectives, positive/negative) and
``number`` (720 templated sentences whose subject noun is singular or plural, 80 nouns).
"""

import csv
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from mechlab.errors import InputError

BUNDLED = {"sentiment": "probe_sentiment.jsonl", "number": "probe_number.jsonl"}


@dataclasses.dataclass(frozen=True)
class ProbeDataset:
    """Texts with labels (and optionally the word each text is about).

    Attributes:
        texts: the inputs.
        labels: one label per text (any strings; at least two distinct).
        words: the marked word of each text (must occur in it), or ``None``.
        name: where the data came from.
    """

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    words: tuple[str, ...] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"Got {len(self.texts)} texts but {len(self.labels)} labels; give one label per text."
            )
        if len(set(self.labels)) < 2:
            raise ValueError(f"A probe needs at least two classes; the labels are all {self.labels[:1]}.")
        if any(not t.strip() for t in self.texts):
            raise ValueError("Some texts are empty; remove them.")
        if self.words is not None:
            if len(self.words) != len(self.texts):
                raise ValueError(
                    f"Got {len(self.words)} words for {len(self.texts)} texts; give one per text."
                )
            missing = [(t, w) for t, w in zip(self.texts, self.words, strict=True) if w not in t]
            if missing:
                raise ValueError(
                    f"The marked word must occur in its text; {missing[0][1]!r} is not in {missing[0][0]!r}."
                )

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels)))

    def __len__(self) -> int:
        return len(self.texts)

    def summary(self) -> str:
        counts = ", ".join(f"{label} {n}" for label, n in sorted(Counter(self.labels).items()))
        words = f", {len(set(self.words))} word types" if self.words else ""
        return f"{self.name or 'dataset'}: {len(self)} texts ({counts}){words}"

    @classmethod
    def from_lists(
        cls,
        texts: Sequence[str],
        labels: Sequence[object],
        words: Sequence[str] | None = None,
        name: str = "",
    ) -> "ProbeDataset":
        return cls(tuple(texts), tuple(str(x) for x in labels), None if words is None else tuple(words), name)


def _rows_from(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"Cannot read probe data {path}: {error.strerror}.") from error
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise InputError(f"{path} is not valid JSON Lines (line {error.lineno}): {error.msg}.") from error
    if path.suffix.lower() in (".csv", ".tsv"):
        return list(
            csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        )
    raise InputError(f"Probe data must be .csv, .tsv or .jsonl; got {path.name}.")


def load_probe_dataset(source: str | Path) -> ProbeDataset:
    """Load ``sentiment`` / ``number`` (shipped) or a CSV/JSONL file with ``text,label[,word]``.

    Raises:
        InputError: unreadable file, missing columns, or inconsistent rows.
    """
    if str(source) in BUNDLED:
        path = Path(str(resources.files("mechlab.data").joinpath(BUNDLED[str(source)])))
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(
                f"No probe data at {path}. Give a CSV/JSONL file with columns text,label[,word], or a "
                f"shipped dataset: {', '.join(BUNDLED)}."
            )
    rows = _rows_from(path)
    if not rows:
        raise InputError(f"{path} holds no rows.")
    missing = {"text", "label"} - set(rows[0])
    if missing:
        raise InputError(f"{path} lacks the column(s) {sorted(missing)}; it has {sorted(rows[0])}.")
    has_words = "word" in rows[0] and all(r.get("word") for r in rows)
    try:
        return ProbeDataset.from_lists(
            [str(r["text"]) for r in rows],
            [r["label"] for r in rows],
            [str(r["word"]) for r in rows] if has_words else None,
            name=str(source),
        )
    except (KeyError, ValueError) as error:
        raise InputError(f"{path}: {error}") from error
