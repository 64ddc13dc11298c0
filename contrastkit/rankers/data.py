"""Training data for RankGen-style rankers: documents cut into (prefix, continuation) pairs.

RankGen (arXiv 2205.09726 section 2.2, App. A.1) pairs a 256-word prefix ending at a sentence
boundary with the following 10-128 words of the same document; all pairs of a minibatch come
from one document so that the other gold continuations are INBOOK negatives. Our defaults are
shorter (128-word prefixes, 10-64-word continuations) to fit MiniLM's 256-token window; both
are parameters. Sentences are split after ``.``, ``!`` or ``?`` followed by whitespace (ours; the
paper does not name its splitter).

Sources: a local text file (WikiText raw format: articles start at `` = Title = `` lines; a file
without such lines is split into documents at blank lines), a folder of ``.txt`` files (one
document each), or a Hub dataset id loaded with ``datasets`` (default ``Salesforce/wikitext``,
config ``wikitext-103-raw-v1``; ``$CONTRASTKIT_DATA`` maps it to a local copy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from contrastkit.errors import UsageError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TITLE = re.compile(r"^ ?= [^=].* = ?$")


@dataclass(frozen=True)
class Pair:
    """A gold (prefix, continuation) pair and the document it came from."""

    doc: int
    prefix: str
    continuation: str


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def documents_from_text(text: str) -> list[str]:
    """WikiText articles (split at top-level `` = Title = `` lines), else blank-line-separated blocks."""
    lines = text.replace("\r\n", "\n").split("\n")
    if any(_TITLE.match(line) for line in lines):
        docs, current = [], []
        for line in lines:
            if _TITLE.match(line):
                if current:
                    docs.append(" ".join(current))
                current = []
            elif line.strip() and not line.strip().startswith("="):  # section headings dropped
                current.append(line.strip())
        if current:
            docs.append(" ".join(current))
        return docs
    return [" ".join(b.split()) for b in re.split(r"\n\s*\n", text) if b.strip()]


def load_documents(source: str, *, data_config: str | None = None, split: str = "train",
                   max_documents: int | None = None) -> list[str]:
    """Documents from a text file, a folder of .txt files, or a Hub dataset id."""
    from contrastkit.io import missing_data_error, resolve_data

    source = resolve_data(source)
    p = Path(source).expanduser()
    if p.is_file():
        docs = documents_from_text(p.read_text(encoding="utf-8"))
    elif p.is_dir():
        docs = [" ".join(f.read_text(encoding="utf-8").split()) for f in sorted(p.glob("*.txt"))]
    elif source.startswith((".", "/", "~")):
        raise UsageError(f"data '{source}' does not exist: expected a text file, a folder of .txt files or a Hub id")
    else:
        try:
            import datasets

            ds = datasets.load_dataset(source, data_config, split=split)
        except Exception:  # offline / unknown id: one line, no traceback
            raise missing_data_error("wikitext" if "wikitext" in source else source, hub_id=source,
                                     flag="--data") from None
        docs = documents_from_text("\n".join(ds["text"]))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UsageError(f"data '{source}' holds no text")
    return docs[:max_documents] if max_documents else docs


def make_pairs(doc_id: int, text: str, *, prefix_words: int, min_continuation_words: int,
               max_continuation_words: int) -> list[Pair]:
    """Non-overlapping pairs: >= prefix_words of whole sentences, then min..max words of whole sentences.

    A continuation stops before the sentence that would take it past ``max_continuation_words``
    (a first sentence longer than that is cut to ``max_continuation_words`` words).
    """
    sents = split_sentences(text)
    words = [len(s.split()) for s in sents]
    pairs, i = [], 0
    while i < len(sents):
        j, n = i, 0
        while j < len(sents) and n < prefix_words:  # prefix: whole sentences, at least prefix_words
            n += words[j]
            j += 1
        k, m = j, 0
        while k < len(sents) and (m < min_continuation_words or m + words[k] <= max_continuation_words):
            if m and m + words[k] > max_continuation_words:
                break
            m += words[k]
            k += 1
        if n < prefix_words or m < min_continuation_words:
            break
        prefix = " ".join(sents[i:j])
        cont = " ".join(sents[j:k])
        if m > max_continuation_words:
            cont = " ".join(cont.split()[:max_continuation_words])
        pairs.append(Pair(doc_id, prefix, cont))
        i = k
    return pairs


def inbook_batches(pairs: list[Pair], batch_size: int) -> list[list[int]]:
    """Index batches of at most ``batch_size`` pairs, each from a single document (>= 2 pairs)."""
    by_doc: dict[int, list[int]] = {}
    for idx, p in enumerate(pairs):
        by_doc.setdefault(p.doc, []).append(idx)
    batches = []
    for idxs in by_doc.values():
        for s in range(0, len(idxs), batch_size):
            chunk = idxs[s:s + batch_size]
            if len(chunk) >= 2:
                batches.append(chunk)
    return batches
