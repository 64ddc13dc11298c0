"""RankGen training data by hand: pair cutting at exact word limits, documents, and local sources."""

from __future__ import annotations

import pytest

from contrastkit.errors import UsageError
from contrastkit.rankers.data import Pair, documents_from_text, load_documents, make_pairs


def test_make_pairs_exact_limits_by_hand():
    # sentence word counts: 4, 2, 3, 7, 2, 4, 2
    text = "A b c d. E f. G h i. J k l m n o p. Q r. S t u v. W x."
    pairs = make_pairs(5, text, prefix_words=4, min_continuation_words=2, max_continuation_words=5)
    assert pairs == [
        Pair(5, "A b c d.", "E f. G h i."),  # prefix stops once it reaches 4 words; 2 + 3 = 5 words is allowed
        Pair(5, "J k l m n o p.", "Q r."),  # 2 + 4 > 5: stop before "S t u v."
        Pair(5, "S t u v.", "W x."),
    ]


def test_a_too_long_first_continuation_sentence_is_cut():
    pairs = make_pairs(0, "A b. C d e f g. H i.", prefix_words=2, min_continuation_words=2, max_continuation_words=3)
    assert pairs == [Pair(0, "A b.", "C d e")]  # the 5-word sentence cut to 3 words; "H i." has no continuation
    assert make_pairs(0, "A b. C d e f g.", prefix_words=2, min_continuation_words=6,
                      max_continuation_words=8) == []  # too short a continuation: no pair


def test_blank_line_documents_collapse_whitespace():
    text = "first  block\nline two\n \nsecond\tblock\n\n\nthird\r\n\r\nfourth"
    assert documents_from_text(text) == ["first block line two", "second block", "third", "fourth"]


def test_load_documents_from_folder_and_file(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("beta\n text")
    (folder / "a.txt").write_text("alpha  text")
    (folder / "c.txt").write_text("  \n")  # empty: skipped
    (folder / "notes.md").write_text("not a document")
    assert load_documents(str(folder)) == ["alpha text", "beta text"]
    assert load_documents(str(folder), max_documents=1) == ["alpha text"]
    f = tmp_path / "docs.txt"
    f.write_text("one\n\ntwo\n\nthree\n")
    assert load_documents(str(f)) == ["one", "two", "three"]
    assert load_documents(str(f), max_documents=2) == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UsageError, match="holds no text"):
        load_documents(str(tmp_path / "empty.txt"))


def test_missing_local_path_is_reported_not_looked_up(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_documents(str(tmp_path / "nope.txt"))
    with pytest.raises(UsageError, match="does not exist"):
        load_documents("./no/such/dir")
