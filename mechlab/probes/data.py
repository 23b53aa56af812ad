"""Labelled text for probing: ``ProbeDataset`` and the datasets mechlab ships.

A probing dataset is a list of texts, one label per text, and optionally the *word* each text is
about (the adjective of a review, the subject noun of a sentence). The word serves twice: as a
probe position (``position="word"`` reads the activation at its last token) and as the unit of the
control task (Hewitt & Liang 2019), which gives every word *type* a random label.

Files are CSV (with a header) or JSON Lines, with fields ``text``, ``label`` and optionally
``word``. Two datasets ship with mechlab (built by ``mechlab/data/make_probe_data.py``):
``sentiment`` (720 templated one-sentence reviews, 60 adjectives, positive/negative) and
``number`` (720 templated sentences whose subject noun is singular or plural, 80 nouns).

``collect_activations`` turns texts into one activation vector per text at each chosen site: at the
last token, the mean over tokens, or the marked word's last token (``word_position``).
"""

import csv
import dataclasses
import json
import re
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.activations import capture
from mechlab.errors import InputError
from mechlab.files import read_text
from mechlab.sites import Site
from mechlab.tokens import require_tokenizer
from mechlab.types import HookedModel

Position = Literal["last", "mean", "word"]
POSITIONS: tuple[str, ...] = get_args(Position)

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
    text = read_text(path, "probe data")
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


def word_position(model: HookedModel, text: str, word: str) -> int:
    """Index of the last token of the first whole-word occurrence of ``word`` in ``text``."""
    match = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) or re.search(re.escape(word), text)
    if match is None:
        raise InputError(f"The word {word!r} does not occur in {text!r}.")
    full = model.to_tokens(text)[0]
    prefix = model.to_tokens(text[: match.end()])[0]
    if not torch.equal(full[: len(prefix)], prefix):
        raise InputError(
            f"In {text!r} the word {word!r} does not end on a token boundary (the tokenizer merges it "
            "with what follows); mark a different word or use position='last'."
        )
    return len(prefix) - 1


@torch.no_grad()
def collect_activations(
    model: HookedModel,
    texts: Sequence[str | Tensor],
    sites: list[Site],
    *,
    position: Position,
    words: tuple[str, ...] | None = None,
    batch_size: int = 32,
) -> Float[Tensor, "layer n d_model"]:
    """One activation vector per text (or token-id sequence) at each site.

    Texts run in right-padded batches: a causal model's earlier positions never see the padding.
    """
    if position == "word" and words is None:
        raise InputError("position='word' needs a dataset with a word column; use 'last' or 'mean'.")
    if not sites:
        raise InputError("No layers to probe: pass layers=None (all) or a non-empty list of layers.")
    if any(isinstance(t, str) for t in texts):
        require_tokenizer(
            model,
            "it cannot read text; give the texts as token-id tensors (collect_activations + "
            "fit_probes), or load a model with a tokenizer.",
        )
    encoded = [t.reshape(-1) if isinstance(t, Tensor) else model.to_tokens(t)[0] for t in texts]
    where = [
        len(e) - 1 if position != "word" else word_position(model, t, w)  # type: ignore[arg-type]
        for e, t, w in zip(encoded, texts, words or texts, strict=True)
    ]
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = encoded[start : start + batch_size]
        lengths = torch.tensor([len(e) for e in chunk])
        batch = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)
        for i, e in enumerate(chunk):
            batch[i, : len(e)] = e
        captured = capture(model, batch.to(model.cfg.device), sites, max_bytes=None, logits=False)
        acts = torch.stack([captured[site].float().cpu() for site in sites])  # [layer batch pos d_model]
        if position == "mean":
            # The first token is the attention sink, with activations orders of magnitude larger.
            mask = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
            mask[:, 0] &= lengths == 1
            pooled = (acts * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]
        else:
            idx = torch.tensor(where[start : start + len(chunk)])
            pooled = acts[:, torch.arange(len(chunk)), idx]
        out.append(pooled)
    return torch.cat(out, dim=1)
