"""Files users give us and files we write for them: line-numbered JSONL reading, atomic writes, data sets.

Shared by the library (preference data, HaluEval, eval caches) and the CLI. Imports nothing of
contrastkit's but the error leaf.

Data sets (:data:`DATASETS`): every data set a command reads by default is named by its Hub id.
``$CONTRASTKIT_DATA`` names a folder holding local copies under the relative paths of the table
(the layout of the repository's ``../shared/data``); :func:`resolve_data` maps a Hub id to that
copy when it exists, and :func:`missing_data_error` is the one message for data that is not there.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from contrastkit.errors import UsageError

DATA_ENV = "CONTRASTKIT_DATA"


@dataclass(frozen=True)
class DataSet:
    """A data set some command reads: what it is, its Hub id, the flag for a local copy, its file under $CONTRASTKIT_DATA."""

    name: str
    what: str
    hub_id: str
    flag: str
    local: str


DATASETS = {d.name: d for d in (
    DataSet("hh-rlhf", "Anthropic HH-RLHF harmless-base preference pairs (train dpo/hypo/treg)",
            "Anthropic/hh-rlhf", "--train_file", "hh_rlhf/harmless-base_test.jsonl.gz"),
    DataSet("halueval", "HaluEval QA with hallucinated answers (train induce)",
            "pminervini/HaluEval", "--data", "halueval/qa_data_first1000.json"),
    DataSet("truthfulqa", "TruthfulQA multiple-choice questions (eval truthfulqa)",
            "truthfulqa/truthful_qa", "--data", "truthfulqa/hub_013686a/mc_task.json"),
    DataSet("wikitext", "WikiText-103 raw test paragraphs (eval open-ended prefixes)",
            "Salesforce/wikitext", "--data", "wikitext103_test/wiki.test.raw"),
)}


def dataset_for(value) -> DataSet | None:
    """The :class:`DataSet` whose Hub id is ``value``, else None (short names are not matched: an
    ``--output_dir truthfulqa`` is a folder, not the data set)."""
    if not isinstance(value, str):
        return None
    return next((d for d in DATASETS.values() if d.hub_id == value), None)


def resolve_data(value):
    """A known data set's Hub id -> its local copy under ``$CONTRASTKIT_DATA`` when there is one; else ``value``."""
    ds = dataset_for(value)
    root = os.environ.get(DATA_ENV)
    if ds is None or not root:
        return value
    local = Path(root).expanduser() / ds.local
    return str(local) if local.exists() else value


def missing_data_error(name: str, hub_id: str | None = None, flag: str | None = None, *,
                       path: str | None = None) -> UsageError:
    """One-line error for data that is not there: what the data set is, its Hub id, and the flag for a local copy.

    ``name`` is a key of :data:`DATASETS` (then ``hub_id``/``flag`` default to its entry) or free text.
    """
    ds = DATASETS.get(name)
    what = ds.what if ds else name
    hub_id = hub_id or (ds.hub_id if ds else None)
    flag = flag or (ds.flag if ds else None)
    where = f"'{path}' does not exist" if path and path != hub_id else "is not available (offline or not downloaded)"
    msg = f"{what}: {where}."
    if hub_id:
        msg += f" Hub id: {hub_id} (needs network)."
    if flag:
        msg += f" Pass a local copy with {flag} PATH"
        msg += f", or set {DATA_ENV} to a folder holding {ds.local}." if ds else "."
    return UsageError(msg)


def read_jsonl(path: str | Path, *, what: str = "input file") -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a JSONL file (gzipped if it ends in ``.gz``).

    Blank lines are skipped. A missing file, a malformed line or a line that is not a JSON
    object raises a :class:`UsageError` naming the file and the line.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} '{path}' does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            yield n, record


def _umask() -> int:
    """The process umask (read by setting and restoring it; no portable getter exists)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w"):
    """Write to a temporary file beside ``path`` and rename it into place only on success.

    After an error or Ctrl-C nothing (not even a partial file) is left at ``path``.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UsageError(f"output directory '{path.parent}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the final file follows the umask like open() does
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
