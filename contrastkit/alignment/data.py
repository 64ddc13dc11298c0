"""Preference data: JSONL (optionally gzipped), ``datasets`` folders, Hub dataset ids and HH-RLHF transcripts.

Every source becomes a :class:`datasets.Dataset` with ``prompt``/``chosen``/``rejected`` columns,
either as strings or as chat messages (lists of ``{"role", "content"}``; trl applies the chat
template). Validation happens here, before any model is loaded: a missing column, an empty
response or a prompt longer than ``max_length`` tokens raises a :class:`UsageError` naming the
source and row.

HH-RLHF rows (``{"chosen", "rejected"}`` full ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``
transcripts, Bai et al. 2022, arXiv 2204.05862) are split at the last ``"\\n\\nAssistant:"``: the
shared prefix up to and including it is the prompt.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from contrastkit.errors import UsageError
from contrastkit.io import read_jsonl

__all__ = ["load_preference_data", "normalize_row", "check_prompt_lengths", "prompt_token_counts", "HH_ASSISTANT"]

HH_ASSISTANT = "\n\nAssistant:"
COLUMNS = ("prompt", "chosen", "rejected")


def _read_json_lines(path: Path, limit: int | None) -> list[tuple[int, dict]]:
    return list(itertools.islice(read_jsonl(path, what="preference data"), limit))


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _split_hh(chosen: str, rejected: str, where: str) -> dict:
    common = 0
    limit = min(len(chosen), len(rejected))
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, common)  # last turn marker inside the shared prefix
    if cut < 0:
        raise UsageError(f"{where}: missing column 'prompt' (and 'chosen'/'rejected' are not HH-RLHF transcripts "
                         f"sharing a prefix that ends in '{HH_ASSISTANT.strip()}')")
    prefix = chosen[: cut + len(HH_ASSISTANT)]
    return {"prompt": prefix, "chosen": chosen[len(prefix):], "rejected": rejected[len(prefix):]}


def _split_messages(chosen: list, rejected: list) -> dict:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def _text_of(value) -> str:
    if _is_messages(value):
        return "".join(str(m["content"]) for m in value)
    return value if isinstance(value, str) else ""


def normalize_row(record: dict, where: str) -> dict:
    """Return ``{prompt, chosen, rejected}`` for one record, or raise a UsageError naming ``where``."""
    missing = [c for c in ("chosen", "rejected") if c not in record]
    if missing:
        raise UsageError(f"{where}: missing column '{missing[0]}' (need prompt/chosen/rejected; "
                         f"found {', '.join(sorted(record)) or 'nothing'})")
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:
        row = {"prompt": record["prompt"], "chosen": chosen, "rejected": rejected}
    elif _is_messages(chosen) and _is_messages(rejected):
        row = _split_messages(chosen, rejected)
    elif isinstance(chosen, str) and isinstance(rejected, str):
        row = _split_hh(chosen, rejected, where)
    else:
        raise UsageError(f"{where}: missing column 'prompt'")
    for col in COLUMNS:
        value = row[col]
        if not (isinstance(value, str) or _is_messages(value)):
            raise UsageError(f"{where}: column '{col}' must be a string or a list of chat messages, "
                             f"got {type(value).__name__}")
        if col != "prompt" and not _text_of(value).strip():
            raise UsageError(f"{where}: empty '{col}' response")
    if isinstance(row["prompt"], str) != isinstance(row["chosen"], str):
        raise UsageError(f"{where}: mix of plain-text and chat-message columns; use one format per row")
    return row


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _select_split(ds, source, split: str):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            from contrastkit.errors import did_you_mean

            raise UsageError(f"dataset '{source}' has no split '{split}'.{did_you_mean(split, list(ds))} "
                             f"Splits: {', '.join(ds)}")
        ds = ds[split]
    return ds


def _load_hub_or_repo(source: str, config: str | None, split: str, data_dir: str | None = None):
    """``datasets.load_dataset`` on a Hub id or a local script-free repo folder (data files + README), as trl's
    scripts load ``--dataset_name``; every failure becomes a one-line UsageError."""
    import datasets

    try:
        # a local folder is re-read every time: datasets keys its cache by the folder's name and config, not
        # by the files' content, so an edited folder (or another one of the same name) would read stale rows
        local = Path(source).exists()
        return datasets.load_dataset(source, name=config, split=split, data_dir=data_dir,
                                     download_mode="force_redownload" if local else None,
                                     verification_mode="no_checks" if local else None)
    except Exception as e:  # noqa: BLE001 - datasets raises many types (offline, not found, bad config)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if Path(source).exists() else " (a Hub id needs network; pass a local file or folder offline)"
        raise UsageError(f"preference data '{source}'" + (f" config '{config}'" if config else "") +
                         (f" data_dir '{data_dir}'" if data_dir else "") +
                         f" split '{split}' could not be loaded with datasets.load_dataset: {msg}{hint}") from None


def _records_from_dataset(path: Path, split: str, limit: int | None, config: str | None = None,
                          data_dir: str | None = None):
    import datasets

    if _is_saved_to_disk(path):
        ds = _select_split(datasets.load_from_disk(str(path)), path, split)
    else:
        ds = _load_hub_or_repo(str(path), config, split, data_dir)
    return _records(ds, limit)


def _records(ds, limit: int | None) -> list[tuple[int, dict]]:
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [(i + 1, dict(r)) for i, r in enumerate(ds)]


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` with Hub-legal characters (and not an existing local path)."""
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not Path(source).exists()


def load_preference_data(source: str | Path, *, split: str = "train", limit: int | None = None,
                         offset: int = 0, drop_invalid: bool = False, dropped: list | None = None,
                         config: str | None = None, data_dir: str | None = None):
    """Load preference pairs as a ``datasets.Dataset`` with prompt/chosen/rejected columns.

    Args:
        source: a ``.jsonl``/``.jsonl.gz``/``.json`` file of objects, a folder written by
            ``datasets.save_to_disk`` (a ``DatasetDict`` uses ``split``), a local dataset repo folder
            without a loading script (data files + README, read by ``datasets.load_dataset``), or a
            Hub dataset id ``owner/name`` (``datasets.load_dataset(source, name=config)[split]``,
            as trl's scripts load ``--dataset_name``; needs network unless cached).
        split: split name for a ``DatasetDict`` folder, a repo folder or a Hub dataset.
        config: the Hub dataset's configuration name (``--dataset_config``), if it has several.
        data_dir: a folder inside the Hub dataset repo (``--dataset_dir``; ``datasets.load_dataset(data_dir=)``),
            e.g. ``harmless-base`` for ``Anthropic/hh-rlhf``, which has subsets as folders, not configs.
        limit: keep at most this many rows (after ``offset``).
        offset: skip this many rows first (e.g. to carve a held-out set out of one file).
        drop_invalid: drop malformed rows (e.g. an empty response; HH-RLHF has a few) instead of
            raising; ``limit`` then counts rows read, not rows kept.
        dropped: with ``drop_invalid``, each dropped row is appended here as ``(row number, reason)``.

    Raises:
        UsageError: the source does not exist or a row is malformed (the message names the row).
    """
    import datasets

    path = Path(source).expanduser()
    want = None if limit is None else offset + limit
    if not path.exists():
        if not looks_like_hub_id(str(source)):
            raise UsageError(f"preference data '{source}' does not exist (nor is it a Hub dataset id owner/name)")
        records = _records(_load_hub_or_repo(str(source), config, split), want)
    elif path.is_dir():
        records = _records_from_dataset(path, split, want, config, data_dir)
    elif path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        records = _read_json_lines(path, want)
    else:
        raise UsageError(f"preference data '{source}': expected a .jsonl[.gz] file or a datasets folder")
    rows = []
    for n, r in records[offset:]:
        try:
            rows.append(normalize_row(r, f"{source}:{n}"))
        except UsageError as e:
            if not drop_invalid:
                raise
            if dropped is not None:
                dropped.append((n, str(e).split(": ", 1)[-1]))
    if not rows:
        raise UsageError(f"preference data '{source}' has no rows" + (f" after offset {offset}" if offset else ""))
    return datasets.Dataset.from_list(rows)


def prompt_token_counts(dataset, tokenizer) -> list[int]:
    """Prompt length of each row as trl 1.16's DPOTrainer counts it: with the tokenizer's special tokens
    (e.g. a BOS) or the chat template, up to where prompt and prompt+response tokenizations diverge."""
    from contrastkit.alignment.token_rewards import tokenize_pairs

    return [len(r["prompt_ids"]) for r in tokenize_pairs(dataset, tokenizer)]


def check_prompt_lengths(dataset, tokenizer, max_length: int | None, *, drop: bool = False, name: str = "data",
                         truncation_mode: str = "keep_start", dropped: list | None = None):
    """Raise (or, with ``drop``, filter) rows whose tokenized prompt alone reaches ``max_length``.

    trl would silently drop them (with ``keep_start``; ``keep_end`` keeps the end of every row, so
    nothing is checked then); we make it an error by default so nothing vanishes unnoticed. With
    ``drop``, each dropped row is appended to ``dropped`` as ``(row number, reason)``.
    Returns the (possibly filtered) dataset.
    """
    if max_length is None or truncation_mode == "keep_end":
        return dataset
    counts = prompt_token_counts(dataset, tokenizer)
    long_rows = [i for i, c in enumerate(counts) if c >= max_length]
    if not long_rows:
        return dataset
    if drop:
        keep = sorted(set(range(len(counts))) - set(long_rows))
        if not keep:
            raise UsageError(f"{name}: every prompt is at least max_length={max_length} tokens long")
        if dropped is not None:
            dropped += [(i + 1, f"prompt of {counts[i]} tokens >= max_length={max_length}") for i in long_rows]
        return dataset.select(keep)
    i = long_rows[0]
    raise UsageError(f"{name}: row {i + 1} has a prompt of {counts[i]} tokens, not shorter than max_length="
                     f"{max_length} ({len(long_rows)} such rows); raise max_length or pass skip_long_prompts")
