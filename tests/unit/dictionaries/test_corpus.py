"""The offline corpus: sources with provenance, duplicate paragraphs dropped, a stable held-out split,
tokens cached per tokenizer, and seeded windows."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import mechlab
from mechlab.dictionaries import corpus
from mechlab.errors import InputError

SHARED = "This paragraph is repeated word for word in two documents, so it is kept once."


class CharTokenizer:
    """One token per character (ids 1..), ``<|endoftext|>`` = 0."""

    def get_vocab(self) -> dict[str, int]:
        return {"<|endoftext|>": 0, **{chr(c): c for c in range(1, 256)}}

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        return {"input_ids": [[min(ord(ch), 255) for ch in text] for text in texts]}


def _docs() -> Iterator[tuple[str, str]]:
    for i in range(200):
        yield f"prose/{i}", f"Document number {i} talks about topic {i * 7 % 13}.\n\n{SHARED}"


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {
        "prose": corpus.CorpusSource("prose", "made-up prose", "CC0", "(test)", _docs),
        "absent": corpus.CorpusSource(
            "absent", "not installed", "MIT", "apt-get install nothing", lambda: iter(())
        ),
    }
    monkeypatch.setattr(corpus, "SOURCES", fake)


def test_build_records_provenance_and_drops_duplicate_paragraphs(sources: None, tmp_path: Path) -> None:
    root = corpus.build_corpus(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["sources"]["prose"]["licence"] == "CC0"
    assert manifest["sources"]["prose"]["documents"] == 200
    assert manifest["sources"]["prose"]["duplicate_paragraphs_dropped"] == 199
    assert manifest["sources"]["absent"]["installed"] is False
    texts = [d["text"] for d in corpus.corpus_documents(directory=root)]
    assert sum(SHARED in t for t in texts) == 1
    heldout = [d["id"] for d in corpus.corpus_documents("heldout", root)]
    assert 0 < len(heldout) < 20  # about 2% of 200
    assert heldout == [
        d["id"] for d in corpus.corpus_documents("heldout", corpus.build_corpus(tmp_path / "again"))
    ]


def test_tokens_are_cached_and_windows_seeded(sources: None, tmp_path: Path) -> None:
    model = mechlab.load_model("toy:tiny").model  # a fresh copy: its tokenizer is replaced
    model.tokenizer = CharTokenizer()
    stream = corpus.token_stream(model.tokenizer, "train", tmp_path)
    assert int((stream == 0).sum()) == sum(1 for _ in corpus.corpus_documents("train", tmp_path))
    assert len(list(tmp_path.glob("tokens-*-train.pt"))) == 1
    a = corpus.corpus_tokens(model, 640, context=32, seed=1, directory=tmp_path)
    b = corpus.corpus_tokens(model, 640, context=32, seed=1, directory=tmp_path)
    c = corpus.corpus_tokens(model, 640, context=32, seed=2, directory=tmp_path)
    assert a.shape == (20, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    windows = stream[: stream.numel() // 32 * 32].reshape(-1, 32)
    assert all(any(torch.equal(row, w) for w in windows) for row in a)
    with pytest.raises(InputError, match=r"holds .* tokens"):
        corpus.corpus_tokens(model, 10**8, directory=tmp_path)


def test_bad_requests_are_refused(sources: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="Unknown corpus source"):
        corpus.build_corpus(tmp_path, sources=["gutenberg"])
    with pytest.raises(InputError, match="No corpus source is installed"):
        corpus.build_corpus(tmp_path, sources=["absent"])
    with pytest.raises(InputError, match="split must be"):
        list(corpus.corpus_documents("validation", tmp_path))


def test_html_pages_become_readable_text() -> None:
    page = (
        "<html><head><title>x</title><style>p{}</style></head>"
        "<body><nav>menu</nav><p>One  line.</p><p>Two</p></body></html>"
    )
    assert corpus.html_text(page) == "One line.\n\nTwo"
