"""An offline text corpus for training sparse dictionaries and for feature pages.

SAEs are trained on activations of varied text. Hubs are out of reach, so the corpus is built from
text that packages install on this machine (Debian's and Python's), each source with its provenance
and licence recorded:

==================  ==========================================================  ===============
source              what (where it is installed from)                           licence
==================  ==========================================================  ===============
python-docs         the Python 3 documentation, reStructuredText sources        PSF-2.0
                    (Debian ``python3.11-doc``: /usr/share/doc/python3.*/html/_sources)
debian-handbook     The Debian Administrator's Handbook, English HTML           GPL-2+ or CC-BY-SA-3.0
                    (Debian ``debian-handbook``)
fortunes            quotations, literature excerpts, jokes (Debian ``fortunes``)  BSD-4-Clause-UC and
                                                                                public domain
python-stdlib       Python's standard library source code (the interpreter's)   PSF-2.0
pydoc-topics        the Python language reference topics (stdlib ``pydoc_data``)  PSF-2.0
==================  ==========================================================  ===============

``build_corpus`` reads every source that is installed (those missing are skipped and listed),
splits them into documents, drops exact duplicate paragraphs (whitespace-normalized), assigns each
document to the ``train`` or ``heldout`` split by a hash of its text (2% held out), and writes
``documents.jsonl.gz`` and ``manifest.json`` under ``$MECHLAB_CACHE_DIR/corpus/v1``. Tokenizing is
per tokenizer and cached beside it. ``corpus_tokens(model, n_tokens)`` returns seeded windows of
the token stream; ``corpus_documents`` the raw texts (feature pages show them).

Installing the sources (the Makefile's ``corpus-deps``)::

    apt-get install -y python3.11-doc debian-handbook fortunes
"""

import dataclasses
import glob
import gzip
import hashlib
import html.parser
import json
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.errors import InputError
from mechlab.files import atomic_write
from mechlab.models.cache import cache_dir
from mechlab.tokens import require_tokenizer
from mechlab.types import HookedModel

VERSION = "v1"
HELDOUT_PERCENT = 2
MIN_PARAGRAPH = 30  # paragraphs shorter than this (characters) are never treated as duplicates
Split = str  # "train" | "heldout"
SPLITS = ("train", "heldout")


@dataclasses.dataclass(frozen=True)
class CorpusSource:
    """One kind of installed text: where it is, what it is, under which licence, how to install it."""

    name: str
    description: str
    licence: str
    install: str
    documents: Callable[[], Iterator[tuple[str, str]]]  # yields (document id, text); empty if absent
    kind: str = "prose"


# ---- readers ----------------------------------------------------------------------------------


_SKIP_TAGS = frozenset({"script", "style", "nav", "head", "header", "footer"})
_BLOCK_TAGS = frozenset(
    {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "pre", "tr", "br", "dt", "dd", "table"}
)


class _HTMLText(html.parser.HTMLParser):
    """The visible text of an HTML page, one block element per line (scripts, styles, nav dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self.skipping:
            self.skipping -= 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)

    def text(self) -> str:
        joined = "".join(self.parts)
        lines = (re.sub(r"[ \t]+", " ", line).strip() for line in joined.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_text(page: str) -> str:
    """The readable text of an HTML page."""
    parser = _HTMLText()
    parser.feed(page)
    return parser.text()


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _python_docs() -> Iterator[tuple[str, str]]:
    for root in sorted(glob.glob("/usr/share/doc/python3*/html/_sources")):
        for path in sorted(Path(root).rglob("*.txt")):
            yield f"python-docs/{path.relative_to(root)}", _read(path)
        return  # one Python version's docs are enough


def _debian_handbook() -> Iterator[tuple[str, str]]:
    root = Path("/usr/share/doc/debian-handbook/html/en-US")
    for path in sorted(root.glob("*.html")) if root.is_dir() else []:
        yield f"debian-handbook/{path.name}", html_text(_read(path))


def _fortunes() -> Iterator[tuple[str, str]]:
    root = Path("/usr/share/games/fortunes")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.suffix) if root.is_dir() else []
    for path in files:
        items = [item.strip() for item in re.split(r"^%$", _read(path), flags=re.M) if item.strip()]
        # 25 fortunes a document, so the held-out split samples every file.
        for start in range(0, len(items), 25):
            yield f"fortunes/{path.name}/{start}", "\n\n".join(items[start : start + 25])


def _python_stdlib() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo", "__pycache__")
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part in skip or part.startswith("test") for part in parts):
            continue
        yield f"python-stdlib/{'/'.join(parts)}", _read(path)


def _pydoc_topics() -> Iterator[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    for name in sorted(topics):
        yield f"pydoc-topics/{name}", str(topics[name])


SOURCES: dict[str, CorpusSource] = {
    s.name: s
    for s in (
        CorpusSource(
            "python-docs",
            "The Python 3 documentation (reStructuredText sources)",
            "PSF-2.0 (/usr/share/doc/python3.11-doc/copyright)",
            "apt-get install -y python3.11-doc",
            _python_docs,
        ),
        CorpusSource(
            "debian-handbook",
            "The Debian Administrator's Handbook (English HTML)",
            "GPL-2+ or CC-BY-SA-3.0 (/usr/share/doc/debian-handbook/copyright)",
            "apt-get install -y debian-handbook",
            _debian_handbook,
        ),
        CorpusSource(
            "fortunes",
            "fortune-mod's quotations, literature excerpts and jokes (not the offensive set)",
            "BSD-4-Clause-UC and public domain (/usr/share/doc/fortunes/copyright)",
            "apt-get install -y fortunes",
            _fortunes,
        ),
        CorpusSource(
            "python-stdlib",
            f"Python {sys.version_info.major}.{sys.version_info.minor} standard library source code",
            "PSF-2.0",
            "(ships with Python)",
            _python_stdlib,
            kind="code",
        ),
        CorpusSource(
            "pydoc-topics",
            "Python language reference topics (pydoc_data.topics)",
            "PSF-2.0",
            "(ships with Python)",
            _pydoc_topics,
        ),
    )
}


# ---- building ---------------------------------------------------------------------------------


def corpus_dir() -> Path:
    """Where the corpus lives: ``$MECHLAB_CACHE_DIR/corpus/v1``."""
    return cache_dir() / "corpus" / VERSION


def _split_of(text: str) -> Split:
    digest = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)
    return "heldout" if digest % 100 < HELDOUT_PERCENT else "train"


def _dedup(text: str, seen: set[bytes]) -> tuple[str, int]:
    """``text`` without paragraphs already in ``seen`` (which it extends); and how many it dropped."""
    kept, dropped = [], 0
    for paragraph in re.split(r"\n\s*\n", text):
        key = " ".join(paragraph.split())
        if not key:
            continue
        if len(key) >= MIN_PARAGRAPH:
            digest = hashlib.blake2b(key.encode("utf-8"), digest_size=12).digest()
            if digest in seen:
                dropped += 1
                continue
            seen.add(digest)
        kept.append(paragraph.strip("\n"))
    return "\n\n".join(kept), dropped


def build_corpus(
    directory: str | Path | None = None, *, sources: list[str] | None = None, force: bool = False
) -> Path:
    """Assemble the corpus from the installed sources into ``directory`` (default ``corpus_dir()``).

    Args:
        directory: where ``documents.jsonl.gz`` and ``manifest.json`` go.
        sources: names from ``SOURCES`` (default: all); a missing one is skipped and recorded.
        force: rebuild even if a manifest is there.

    Returns:
        The directory.

    Raises:
        InputError: an unknown source name, or no source is installed.
    """
    out = Path(directory) if directory is not None else corpus_dir()
    if (out / "manifest.json").is_file() and not force:
        return out
    names = list(SOURCES) if sources is None else sources
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise InputError(f"Unknown corpus source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}.")
    seen: set[bytes] = set()
    records: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for name in names:
        source = SOURCES[name]
        n_docs = n_chars = n_dropped = 0
        for doc_id, raw in source.documents():
            text, dropped = _dedup(raw, seen)
            n_dropped += dropped
            if len(text) < MIN_PARAGRAPH:
                continue
            records.append({"id": doc_id, "source": name, "split": _split_of(text), "text": text})
            n_docs += 1
            n_chars += len(text)
        report[name] = {
            "description": source.description,
            "licence": source.licence,
            "install": source.install,
            "kind": source.kind,
            "installed": n_docs > 0,
            "documents": n_docs,
            "characters": n_chars,
            "duplicate_paragraphs_dropped": n_dropped,
        }
    if not records:
        hints = "; ".join(f"{s.name}: {s.install}" for s in SOURCES.values())
        raise InputError(f"No corpus source is installed. Install some: {hints}.")
    out.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write(out / "documents.jsonl.gz", gzip.compress(body.encode("utf-8"), mtime=0))
    manifest = {
        "format": f"mechlab-corpus/{VERSION}",
        "heldout_percent": HELDOUT_PERCENT,
        "documents": len(records),
        "sources": report,
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return out


def corpus_documents(
    split: Split | None = None, directory: str | Path | None = None
) -> Iterator[dict[str, Any]]:
    """The corpus's documents (``id``, ``source``, ``split``, ``text``), building it if needed."""
    if split is not None and split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")
    root = build_corpus(directory)
    with gzip.open(root / "documents.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if split is None or record["split"] == split:
                yield record


# ---- tokens -----------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary (the token cache is per tokenizer)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode("utf-8")).hexdigest()[:16]


def separator_id(tokenizer: Any) -> int:
    """The token put between documents: ``<|endoftext|>`` if the vocabulary has it, else EOS."""
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"])
    for attribute in ("eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attribute, None)
        if value is not None:
            return int(value)
    raise InputError("The tokenizer has no <|endoftext|>, EOS or BOS token to separate documents with.")


def token_stream(
    tokenizer: Any, split: Split, directory: str | Path | None = None
) -> Int[Tensor, " n_tokens"]:
    """Every ``split`` document tokenized and concatenated, each followed by the separator (cached)."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")
    root = build_corpus(directory)
    path = root / f"tokens-{tokenizer_fingerprint(tokenizer)}-{split}.pt"
    if path.is_file():
        cached: Tensor = torch.load(path, weights_only=True)
        return cached
    sep = separator_id(tokenizer)
    texts = [r["text"] for r in corpus_documents(split, root)]
    ids: list[int] = []
    for start in range(0, len(texts), 256):
        for row in tokenizer(texts[start : start + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(sep)
    stream = torch.tensor(ids, dtype=torch.int32)
    import io

    buffer = io.BytesIO()
    torch.save(stream, buffer)
    atomic_write(path, buffer.getvalue())
    return stream


def corpus_tokens(
    model: HookedModel,
    n_tokens: int,
    *,
    context: int = 128,
    split: Split = "train",
    seed: int = 0,
    directory: str | Path | None = None,
) -> Int[Tensor, "n_seq context"]:
    """``ceil(n_tokens / context)`` windows of ``context`` tokens from the corpus, in a seeded order.

    Windows are consecutive, non-overlapping slices of the split's token stream (documents joined
    by the separator token), so a window may span two documents, as in pre-training.

    Raises:
        InputError: the split holds fewer windows than asked for (the message says how many).
    """
    if context < 2 or n_tokens < 1:
        raise InputError(f"corpus_tokens needs context ≥ 2 and n_tokens ≥ 1; got {context}, {n_tokens}.")
    stream = token_stream(require_tokenizer(model), split, directory)
    n_windows = stream.numel() // context
    wanted = -(-n_tokens // context)
    if wanted > n_windows:
        raise InputError(
            f"The corpus's {split} split holds {n_windows * context:,} tokens ({n_windows:,} windows of "
            f"{context}); {wanted * context:,} were asked for. Ask for fewer tokens or install more "
            f"sources ({', '.join(s.install for s in SOURCES.values() if s.install.startswith('apt'))})."
        )
    windows = stream[: n_windows * context].reshape(n_windows, context)
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed))[:wanted]
    return windows[order].long()
