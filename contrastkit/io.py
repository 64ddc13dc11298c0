"""Files users give us and files we write for them: line-numbered JSONL reading, atomic writes.

Shared by the library (preference data, HaluEval, eval caches) and the CLI. Imports nothing of
contrastkit's but the error leaf.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from contrastkit.errors import UsageError


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
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
