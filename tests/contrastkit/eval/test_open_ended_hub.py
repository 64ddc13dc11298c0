"""The open-ended task's default data is a Hub id: it loads through ``datasets`` when online.

No network here, so ``datasets.load_dataset`` is replaced by a stand-in that records its arguments
and returns a tiny in-memory split; a real local file must give the same items.
"""

from __future__ import annotations

import pytest

from contrastkit.errors import UsageError
from contrastkit.eval.open_ended import OpenEnded, OpenEndedConfig, load_prefix_pairs
from contrastkit.testing import CORPUS_WORDS

LINES = [" = Title = ", "", " ".join(CORPUS_WORDS[:40]), " ".join(CORPUS_WORDS[40:50]), " ".join(CORPUS_WORDS[10:60])]


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": [line + "\n" for line in LINES]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_default_hub_id_loads_wikitext_103_raw_test(fake_hub, tiny_tok, tmp_path):
    local = tmp_path / "wiki.test.raw"
    local.write_text("\n".join(LINES) + "\n")
    cfg = OpenEndedConfig(prefix_tokens=8, max_new_tokens=8, mauve=False)
    assert cfg.data == "Salesforce/wikitext"
    task = OpenEnded(None, tiny_tok, cfg)
    assert fake_hub == [("Salesforce/wikitext", "wikitext-103-raw-v1", "test")]
    from_file = load_prefix_pairs(local, tiny_tok, prefix_tokens=8, reference_tokens=8)
    assert task.items() == from_file and len(from_file) == 2  # the title and the 10-word line are dropped
    assert task.dataset_info()["file"] == "Salesforce/wikitext"
    # identified by its text, not by its name; and --limit does not change the identity
    limited = OpenEnded(None, tiny_tok, OpenEndedConfig(prefix_tokens=8, max_new_tokens=8, mauve=False, limit=1))
    assert limited.identity() == task.identity() and len(limited.items()) == 1


def test_hub_failure_is_one_line_with_the_local_flag(monkeypatch, tiny_tok):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError, match=r"Salesforce/wikitext.*--data"):
        OpenEnded(None, tiny_tok, OpenEndedConfig(mauve=False))


def test_missing_local_path_is_not_sent_to_the_hub(fake_hub, tiny_tok, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        OpenEnded(None, tiny_tok, OpenEndedConfig(data="runs/wiki.raw", mauve=False))
    assert fake_hub == []
