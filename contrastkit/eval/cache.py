"""The per-run record cache of the eval runner and the identity it is keyed by.

A cached run may be reused only when everything that determines its scores is unchanged, and
nothing else may force a recompute. The *fingerprint* is a flat ``{"field": value}`` dict:

* ``task`` and ``task.<key>``: the task's :meth:`identity` (for TruthfulQA: the SHA-256 of the data
  file's bytes, the prompt preset, chat, the task version; for generation also the length limit,
  the generation preset and the judges). ``limit``, ``batch_size``, chunk sizes and anything else
  that does not change a score are left out, so a ``--limit 100`` run can be extended to the full set.
* ``strategy.<param>``: the strategy name and *every* field of its resolved config (defaults
  included); an ``amateur`` given as a path is replaced by :func:`path_identity`, a model object
  by :func:`contrastkit.models.weights_identity`.
* ``model.<key>``: :func:`contrastkit.models.weights_identity` of the scored model (source,
  Hub revision, adapters, a content digest of the weights, so an added ``--adapter`` counts).
* ``seed``.

Each record also stores its item's ``item_key`` (TruthfulQA: the question text), checked on resume,
so a record can never be paired with a different question even if ids were reused.
A mismatch raises a one-line :class:`~contrastkit.errors.UsageError` naming the fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from contrastkit.errors import UsageError

META_SCHEMA = 2
_HASH_LIMIT = 64 << 20  # files up to 64 MiB are hashed; bigger ones are identified by size and mtime


def jsonable(value):
    """A JSON-safe copy: dicts/lists recursed, models by their ``name_or_path``, other objects by ``repr``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value) if not hasattr(value, "name_or_path") else str(value.name_or_path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path_identity(path: str | Path) -> dict:
    """Identity of a model/adapter directory or file: each file's SHA-256 (size + mtime above 64 MiB)."""
    p = Path(path).expanduser()
    files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
    out = {}
    for f in files:
        st = f.stat()
        out[f.name] = file_sha256(f)[:20] if st.st_size <= _HASH_LIMIT else f"size={st.st_size},mtime={st.st_mtime_ns}"
    return {"path": str(p.resolve()), "files": out}


def value_identity(value, key: str = ""):
    """What identifies a strategy parameter value: models by their weights, model/adapter paths by their files.

    A string counts as a path when it names an existing file or directory and either the parameter
    is ``amateur`` or the string contains a path separator (so ``lower_layer="middle"`` stays text).
    """
    if hasattr(value, "named_parameters"):
        from contrastkit.models import weights_identity

        return weights_identity(value)
    if isinstance(value, (str, Path)) and str(value) and (key == "amateur" or os.sep in str(value)) \
            and Path(str(value)).expanduser().exists():
        return path_identity(value)
    return jsonable(value)


def strategy_identity(name: str, params: dict) -> dict:
    """Every field of the strategy's resolved config (defaults included), values by :func:`value_identity`."""
    from contrastkit.decoding.base import get_strategy

    config = get_strategy(name).make_config(**params)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)} if dataclasses.is_dataclass(
        config) else dict(params)
    return {"name": name, **{k: value_identity(v, k) for k, v in fields.items()}}


def run_label(name: str, params: dict) -> str:
    """``name`` without parameters, else ``name-<6 hex of the parameters>`` (records/<label>.jsonl)."""
    if not params:
        return name
    digest = hashlib.sha256(json.dumps(jsonable(params), sort_keys=True).encode()).hexdigest()[:6]
    return f"{name}-{digest}"


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def changed_fields(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))


def mismatch_message(path: Path, old: dict, new: dict) -> str:
    diff = changed_fields(old, new)
    shown = "; ".join(f"{k}: {_short(old.get(k, '<absent>'))} -> {_short(new.get(k, '<absent>'))}" for k in diff[:3])
    more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
    return (f"{path} was computed with a different {', '.join(diff[:3])}{more} ({shown}); "
            f"use --overwrite to recompute or another --output_dir")


def _short(v) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


class RecordCache:
    """Append-only JSONL of finished per-item records for one run label, plus its ``.meta.json``.

    Construction only *checks* (fingerprint, schema) and reads the records; nothing on disk changes
    until :meth:`open`, so a run refused at any label's check leaves every file as it was.
    """

    def __init__(self, path: Path, fingerprint: dict, overwrite: bool = False, info: dict | None = None):
        self.path, self.meta = path, path.with_suffix(".meta.json")
        self.fingerprint, self.overwrite, self.info = jsonable(fingerprint), overwrite, info
        self.created = time.time()
        self.records: dict[Any, dict] = {}
        if overwrite:
            return
        if self.meta.exists():
            old = json.loads(self.meta.read_text())
            if old.get("schema") != META_SCHEMA:
                raise UsageError(f"{self.path} was written by an older contrastkit (cache format "
                                 f"{old.get('schema', 1)}, now {META_SCHEMA}); use --overwrite to recompute")
            if old["fingerprint"] != self.fingerprint:
                raise UsageError(mismatch_message(self.path, old["fingerprint"], self.fingerprint))
            self.created = old.get("created", self.created)
            self.records = load_records(self.path)

    def open(self) -> "RecordCache":
        """Start writing: drop stale files (``overwrite``, or records without a meta), write the meta."""
        from contrastkit.eval.report import atomic_write_text

        if self.overwrite:
            for p in (self.path, self.meta):
                p.unlink(missing_ok=True)
        if not self.meta.exists():
            self.path.unlink(missing_ok=True)
        atomic_write_text(self.meta, json.dumps({"schema": META_SCHEMA, "fingerprint": self.fingerprint,
                                                 "created": self.created, **jsonable(self.info or {})},
                                                indent=1, sort_keys=True))
        self.records = load_records(self.path, rewrite=True)
        return self

    def check_items(self, keys: dict) -> None:
        """Refuse cached records whose ``item_key`` differs from the current item's (``keys``: id -> key)."""
        for rid, rec in self.records.items():
            if rid in keys and rec.get("item_key") != keys[rid]:
                raise UsageError(f"{self.path}: item {rid} was computed for {_short(rec.get('item_key'))} but the "
                                 f"data now has {_short(keys[rid])} there (item_key changed); use --overwrite")

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.records[r["id"]] = r


def load_records(path: Path, rewrite: bool = False) -> dict[Any, dict]:
    """Records by id; a line cut short by a kill (and anything after it) is dropped (and cut from the file)."""
    records: dict[Any, dict] = {}
    if not path.exists():
        return records
    good = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if not line.endswith("\n"):
                break
            records[rec["id"]] = rec
            good.append(line)
    if rewrite:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(good)
    return records


def load_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("schema") == META_SCHEMA else None
